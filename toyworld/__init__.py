"""toyworld: the procedural captioned-shapes world that proves the method on CPU and GPU.

Owns: the scene grammar and renderer, captions and splits, the exact fidelity checker,
the recipes that train the shipped model family (``models``, ``recipes``), the small VAE
decoder, the embedded retrieval DB of the shipped model and its evaluation.
Imports: ``training``, ``retrieval`` and ``engines``; never ``service``, ``bench`` or ``lab``.
Imported by: the CLI, the benchmarks and the lab; no other product package.
Entry points: CLI ``ragturbo toyworld ...`` (docs/toyworld.md).
"""
