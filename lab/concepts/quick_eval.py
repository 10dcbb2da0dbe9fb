"""A quick read of a run: held-out concepts at N = 20 only, 10 prompts per concept x 2 seeds,
the run's adapter against RUN/control.safetensors, over the run's cached database.

usage: python lab/concepts/quick_eval.py RUN_DIR N_DB
"""
import json
import logging
import sys
from pathlib import Path

import torch


def main() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from engines.default_model import SHIPPED
    from engines.pipeline import OneStepPipeline
    from toyworld.concept_eval import evaluate_concepts, format_concepts
    from toyworld.fideval import apply_variant
    from toyworld.models.concept_train import cached_database

    run, n_db = Path(sys.argv[1]), int(sys.argv[2])
    pipes = {}
    for n in ("adapter", "control"):
        p = OneStepPipeline.from_pretrained(SHIPPED, device=torch.device("cpu"))
        apply_variant(p, run / f"{n}.safetensors")
        pipes[n] = p
    db = cached_database(pipes["adapter"], n_db, run / "db.pt")
    r = evaluate_concepts(pipes, db, (20,), 10, 2, 1000)
    (run / "quick_n20.md").write_text(format_concepts(r) + "\n")
    (run / "quick_n20.json").write_text(json.dumps(r))
    print(format_concepts(r))


if __name__ == "__main__":
    main()
