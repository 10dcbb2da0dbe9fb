"""Benchmarks of the one-step pipeline (``ragturbo bench pipeline``, ``make bench``)."""
