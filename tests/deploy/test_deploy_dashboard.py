"""The Grafana dashboard parses, covers what operators read, and uses only
metric names that docs/service.md defines."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASH = ROOT / "k8s" / "ragturbo" / "files" / "ragturbo-dashboard.json"
# docs/service.md "Metrics" (prefix ragturbo_); histograms expose _bucket/_sum/_count.
DESIGN_METRICS = {
    "requests_total", "request_duration_seconds", "queue_wait_seconds",
    "stage_duration_seconds", "batch_size", "queue_depth", "rejected_total",
    "retrieval_score", "retrieval_unavailable_total", "images_generated_total", "build_info",
}
HISTOGRAMS = {"request_duration_seconds", "queue_wait_seconds", "stage_duration_seconds",
              "batch_size", "retrieval_score"}


def _exprs() -> list[str]:
    dash = json.loads(DASH.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_parses_and_has_unique_panel_ids() -> None:
    dash = json.loads(DASH.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dash["templating"]["list"]} >= {"datasource", "namespace"}


def test_metric_names_are_those_of_the_service_docs() -> None:
    design = Path(__file__).resolve().parents[2] / "docs" / "service.md"
    used = set()
    for expr in _exprs():
        for m in re.findall(r"\bragturbo_([a-z_]+)", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", m)
            assert base in DESIGN_METRICS, f"{m} is not a documented metric"
            if m != base:
                assert base in HISTOGRAMS, f"{m}: {base} is not a histogram"
            used.add(base)
    text = design.read_text()
    for base in used:
        assert base in text, f"{base} missing from docs/service.md"
    # everything an operator needs on one page
    assert used >= {"request_duration_seconds", "stage_duration_seconds", "batch_size",
                    "queue_depth", "rejected_total", "retrieval_unavailable_total",
                    "retrieval_score"}


def test_latency_percentiles_and_stage_breakdown_are_plotted() -> None:
    exprs = "\n".join(_exprs())
    for q in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, route) (rate(ragturbo_request_duration_seconds_bucket" in exprs
    assert "sum by (stage)" in exprs
    assert "sum by (reason) (rate(ragturbo_rejected_total" in exprs
