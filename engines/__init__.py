"""engines: the model graph and everything that runs it; knows nothing of the index.

Owns: the UNet split at H-space (``unet_split``), the H-adapter (``hadapter``), slerp
injection (``inject``), the one-step pipeline (``pipeline``), model directories
(``modeldir``), the graph shapes (``shapes``), ONNX export and TensorRT build, the
runtime backends behind one interface (``backends``: ``create_backend``), the serving
engine's CUDA-graph runner and device index (``fast``), and the benchmarks (``bench``).
Imports: torch, diffusers, transformers only -- never ``retrieval``, ``service``,
``training`` or ``toyworld``; retrieved H-features and λ arrive as tensors.
Entry points: ``engines.backends.create_backend``, ``engines.pipeline.OneStepPipeline``,
CLI ``ragturbo generate|export onnx|build trt|bench pipeline``.
"""
