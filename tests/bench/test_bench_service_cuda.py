"""The GPU service bench's whole flow, run on the CPU with the tiny model (one short row).

On the GPU machine the same code starts the SD-Turbo-sized model; here it proves that a
``fast`` server with synthetic stored pairs starts, answers with retrieval on (every
counted response has retrieval_status "ok"), and that the stage breakdown and mean batch
are read back from /metrics.
"""

from __future__ import annotations

from pathlib import Path

from bench.service_cuda import bench_service_cuda, format_report


def test_bench_service_cuda_flow_on_cpu(tmp_path: Path) -> None:
    res = bench_service_cuda(
        clients=[2], pairs=[300], seconds=2.0, work=tmp_path, fmt="jpeg", k=2, max_batch=2,
        max_wait_ms=2.0, buckets="1,2", feature_dtype_big="float8", inprocess_batches=[],
        inprocess_budget_s=0.0, startup_timeout_s=180.0, arch="tiny", device="cpu",
    )
    (srv,) = res["servers"]
    assert srv["pairs"] == 300 and srv["ready_s"] > 0
    (row,) = res["rows"]
    assert row["errors"] == 0 and row["images_per_s"] > 0  # errors count non-"ok" retrieval too
    assert row["mean_batch"] is not None and 1.0 <= row["mean_batch"] <= 2.0
    assert row["stages_ms"]["unet"] and row["stages_ms"]["encode"] is not None
    assert "| 300 | 2 |" in format_report(res)
    log = (tmp_path / "server-300.log").read_text()
    assert "SYNTHETIC" in log  # the synthetic source says so
