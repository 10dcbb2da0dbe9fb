"""Histogram buckets of the service's Prometheus metrics (seconds), in one place.

Each choice is explained next to it. Prometheus computes quantiles by linear interpolation
inside a bucket, so a p99 is only as precise as the bucket it falls in: the buckets are
dense where the latencies of a one-step model live (1 ms to 1 s) and sparse beyond.
"""

from __future__ import annotations

# One pipeline stage (text encoder, retrieval, UNet, VAE, image encode). A stage of the
# tiny CPU model takes ~1-20 ms, sd-turbo stages on an H100 ~2-30 ms, on CPU up to
# seconds. 0.5 ms steps would be noise, so start at 0.5 ms and grow ~1.5-2x per bucket,
# keeping roughly two buckets per doubling up to 100 ms, then coarser up to 10 s.
STAGE_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

# End-to-end request latency and queue wait. The latency SLO of docs/perf.md is stated in
# tens of milliseconds, so 5 ms resolution up to 50 ms, then ~1.5x steps; the tail up
# to the default request timeout (30 s) so timed-out requests land in a finite bucket.
REQUEST_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
    0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip

# Queue wait is usually below max_wait_ms (default 5 ms) when the service keeps up and
# grows in whole batch-times when it does not: dense below 10 ms to see the batching
# window itself, then the request buckets.
QUEUE_BUCKETS: tuple[float, ...] = (
    0.0001, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
    0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip

# Images per pipeline call. Engines are built for powers of two (1..64 in docs/perf.md), so
# the powers of two and the values right between them show how full batches run.
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)

# Cosine similarity of a retrieved caption to the prompt, in [-1, 1]. Scores that matter
# sit in 0.5..1, where 0.05 steps separate "same shape, other colour" from exact matches.
SCORE_BUCKETS: tuple[float, ...] = (
    -0.5, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95,
    0.975, 0.99, 1.0,
)  # fmt: skip
