"""engines: the model graph and everything that runs it; knows nothing of the index.

Owns: the request below compose (``request``: ``ImageRequest``, ``Batch``, the controls the
UNet reads, the one gather of neighbours), the UNet split at H-space (``unet_split``), the H-adapter (``hadapter``), slerp
injection and the per-sample retrieval mix (``inject``), the one-step pipeline
(``pipeline``), model directories (``modeldir``), the exported graphs as torch modules
(``graphs``) and their shapes (``shapes``), ONNX export
and TensorRT build, the runtime backends behind one interface (``backends``:
``create_backend``, the registry and each class's ``capabilities``) and the serving engine's CUDA-graph runner and device index (``fast``).
Imports: torch, diffusers, transformers only -- never ``retrieval``, ``service``,
``training``, ``toyworld``, ``bench`` or ``lab``; retrieved H-features and λ arrive as tensors.
Entry points: ``engines.backends.create_backend``, ``engines.pipeline.OneStepPipeline``,
CLI ``ragturbo export onnx|build trt``.
"""
