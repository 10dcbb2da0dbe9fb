"""One GPU call: concept rows at scale, adapter + control training, then the concept and
ordinary tables, written to OUT as they finish.

usage: python lab/concepts/gpu_run.py OUT WORK [rows] [train_minutes] [copy_layout 0|1] [frac_random]
"""

def main() -> None:
    import json
    import logging
    import os
    import sys
    import time
    from pathlib import Path

    import torch

    out, work = Path(sys.argv[1]), Path(sys.argv[2])
    n_rows = int(sys.argv[3]) if len(sys.argv) > 3 else 64000
    minutes = float(sys.argv[4]) if len(sys.argv) > 4 else 3.5
    copy_layout = bool(int(sys.argv[5])) if len(sys.argv) > 5 else True
    frac_random = float(sys.argv[6]) if len(sys.argv) > 6 else 0.5
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        handlers=[logging.FileHandler(out / "log.txt"), logging.StreamHandler()])
    for noisy in ("httpx", "diffusers", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log = logging.getLogger("gpu_run")
    t0 = time.time()
    from engines.default_model import SHIPPED
    from engines.pipeline import OneStepPipeline
    from toyworld import fideval
    from toyworld.concept_eval import evaluate_concepts, format_concepts
    from toyworld.fideval import SHIPPED_EVAL, Suite, apply_variant
    from toyworld.models.concept_rows import RowOptions
    from toyworld.models.concept_train import cached_database, train_concepts

    dev = torch.device("cuda")
    opt = RowOptions(0.35, 0.25, frac_random, copy_layout)
    summ = train_concepts(work, n_rows=n_rows, options=opt, minutes=minutes, batch_size=256, lr_adapter=3e-4,
                          lr_decoder=1e-4, device=dev, workers=max(2, (os.cpu_count() or 4) - 2))
    (out / "summary.json").write_text(json.dumps({k: v for k, v in summ.items() if k not in ("adapter", "control")}
                                                 | {a: {kk: summ[a].get(kk) for kk in ("first_loss", "final_loss")} for a in ("adapter", "control") if a in summ},
                                                 indent=1, default=str))
    log.info("trained %.0f s after start", time.time() - t0)


    def pipe_with(variant):
        p = OneStepPipeline.from_pretrained(SHIPPED, device=dev)
        if variant is not None:
            apply_variant(p, variant)
        return p


    new_a, new_c = pipe_with(work / "adapter.safetensors"), pipe_with(work / "control.safetensors")
    db = cached_database(new_a, 10000, work / "db.pt")
    r = evaluate_concepts({"adapter": new_a, "control": new_c}, db, (0, 5, 20, 100), 10, 4)
    (out / "concepts_new.md").write_text(format_concepts(r) + "\n")

    log.info("concepts %.0f s after start\n%s", time.time() - t0, format_concepts(r))
    old_a, old_c = pipe_with(None), pipe_with(SHIPPED_EVAL / "control.safetensors")
    fideval.Database.build = staticmethod(lambda pipe, n, batch=512: db)
    from toyworld.models.data import eval_prompts

    lines, _ = eval_prompts(200, 200)
    suite = Suite({"student": new_a, "adapter": new_a, "control": new_c, "real": old_a, "control_plain": old_c}, None, "new vs shipped")
    res = fideval.evaluate(lines, suite, 4, 10000, modes=("student", "adapter", "control", "real", "control_plain"))
    (out / "ordinary.md").write_text(fideval.format_table(res) + "\n")
    log.info("ordinary %.0f s after start\n%s", time.time() - t0, fideval.format_table(res))
    r = evaluate_concepts({"adapter": old_a, "control": old_c}, db, (20,), 10, 4)
    (out / "concepts_shipped.md").write_text(format_concepts(r) + "\n")
    log.info("done %.0f s after start", time.time() - t0)


if __name__ == "__main__":
    main()
