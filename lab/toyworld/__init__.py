"""Toy-world experiments: the fidelity run, the multi-arm sweep, the swap probe, arm throughput,
shipping a run's arm."""
