"""Toy-world experiments: the fidelity run, the swap probe, arm throughput, shipping a run's arm."""
