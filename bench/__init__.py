"""bench: the benchmarks users run (``ragturbo bench pipeline | service | retrieval | recall | fp8``).

Owns: the in-process pipeline bench (``pipeline``, its variants, timing and report), the HTTP
service bench (``service`` on CPU, ``service_cuda`` on a GPU) over one server starter, one
/metrics reader and one closed-loop load (``http``), the index benches (``retrieval``: random
vectors; ``recall``: real caption embeddings), the float8 feature check (``fp8``) and the
training job's step time and memory (``train_speed``, ``python -m bench.train_speed``).
Imports: every product package (``engines``, ``retrieval``, ``service``, ``training``, ``toyworld``).
Imported by: the CLI only (``ragturbo.cli`` registers ``bench.cli``); no product package
imports it. Results and how to read them: docs/perf.md.
"""
