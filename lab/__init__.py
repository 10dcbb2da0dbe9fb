"""lab: the experiment wing — run drivers, probes, GPU scripts and the archive of raw runs.

Owns: ``lab.toyworld`` (the mid-block family's fidelity run ``fidelity``, the swap probe
``probe``, arm-training throughput ``bench_arms``, ``ship`` of a run's winning arm, the GPU
run scripts ``gpu_*.sh``), ``lab.bench`` (one-off GPU benches: ``gpu17`` and the VAE levers
``vae_levers``) and ``lab/archive/`` (dated run logs, raw JSON, the scripts that made them).
Imports: anything. Imported by: nothing (no product package, not ``bench``).
Run a driver from the repository root as ``python -m lab.<package>.<module> --help``.
"""
