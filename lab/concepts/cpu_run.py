"""A CPU-sized run of the copy-the-neighbour objective (adapter arm only, from the shipped
model), then a quick read at N = 20: the lever the GPU run would have sized up.

usage: python lab/concepts/cpu_run.py RUN_DIR [minutes] [rows]
"""
import json
import logging
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    log = logging.getLogger("cpu_run")
    from engines.default_model import SHIPPED
    from engines.pipeline import OneStepPipeline
    from toyworld.concept_eval import evaluate_concepts, format_concepts
    from toyworld.fideval import SHIPPED_EVAL, apply_variant
    from toyworld.models.concept_rows import RowOptions
    from toyworld.models.concept_train import cached_database, train_concepts

    run = Path(sys.argv[1])
    minutes = float(sys.argv[2]) if len(sys.argv) > 2 else 50
    n_rows = int(sys.argv[3]) if len(sys.argv) > 3 else 2500
    t0 = time.time()
    summ = train_concepts(run, n_rows=n_rows, n_db=4000, options=RowOptions(0.4, 0.3, 0.5, True), minutes=minutes,
                          batch_size=32, lr_adapter=4e-4, lr_decoder=1e-4, arms=("adapter",))
    log.info("trained: %s steps, rows %s, %.0f s", summ["adapter"]["steps"], summ["rows"], time.time() - t0)
    pipes = {}
    for name, variant in (("adapter", run / "adapter.safetensors"), ("control", SHIPPED_EVAL / "control.safetensors")):
        p = OneStepPipeline.from_pretrained(SHIPPED, device=torch.device("cpu"))
        apply_variant(p, variant)
        pipes[name] = p
    db = cached_database(pipes["adapter"], 4000, run / "db.pt")
    r = evaluate_concepts(pipes, db, (20,), 10, 2, 1000)
    (run / "quick_n20.md").write_text(format_concepts(r) + "\n")
    (run / "quick_n20.json").write_text(json.dumps(r))
    print(format_concepts(r))
    log.info("done %.0f s", time.time() - t0)


if __name__ == "__main__":
    main()
