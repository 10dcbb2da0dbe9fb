"""engines.fast: the optimised torch path for the GPU: regional compile, CUDA graphs per batch
bucket, sub-pixel VAE upsampling, the device index (``engines.fast.runner.FastRunner``).

Owns: ``runner`` (the serving engine behind the ``fast`` backend), ``compile`` (its config
and the regional-compile lever), ``gpu_index`` (exact top-k over caption vectors on the
device), ``subpixel`` (the VAE upsampler), ``host`` (pinned copies, nvJPEG).
Imports: the rest of ``engines`` (pipeline, rules, cuda_graphs, inject); never the backends.
"""
