"""The optimised torch path for the GPU: regional compile, CUDA graphs per batch bucket,
sub-pixel VAE upsampling (``engines.fast.runner.FastRunner``)."""
