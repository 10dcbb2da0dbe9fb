"""toyworld: the procedural captioned-shapes world that proves the method on CPU and GPU.

Owns: the scene grammar and renderer, captions and splits, the exact fidelity checker,
the recipes that train the shipped model family (``models``), the embedded retrieval DB
of the shipped model, evaluation and probes.
Imports: ``retrieval``, ``engines``, ``training``; nothing imports it but the CLI.
Entry points: CLI ``ragturbo toyworld ...``.
"""
