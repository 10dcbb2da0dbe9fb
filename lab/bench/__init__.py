"""One-off GPU benches: the end-to-end GPU driver (``gpu17``) and the VAE decoder levers."""
