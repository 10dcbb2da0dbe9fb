"""What a MIN_SCORE costs: checker fidelity of the shipped model through the service's
path (``build_text_to_image`` over the embedded database) at several thresholds.

    PYTHONPATH=. python lab/min_score/fidelity.py --db data/toydb --thresholds 0,0.88,0.9 --seeds 2

Only prompts whose top-1 score falls below a threshold change (their λ becomes 0); the
table gives fidelity over all 400 eval prompts and over the prompts each threshold
changes, with a paired bootstrap interval against threshold 0, and retrieval off.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--thresholds", default="0,0.88,0.9")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("data/min_score/fidelity.json"))
    a = ap.parse_args()
    from engines.default_model import SHIPPED
    from retrieval.compose import ImageRequest, build_text_to_image
    from toyworld.models.data import eval_prompts
    from toyworld.scoring import paired_bootstrap, score_images

    prompts, _ = eval_prompts(200, 200)
    flat = [(p, 1000 * i + j) for i, p in enumerate(prompts) for j in range(a.seeds)]
    t2i = build_text_to_image(SHIPPED, db_path=a.db, retrieval_timeout_s=None)
    ts = [float(x) for x in a.thresholds.split(",")]

    def run(mode: str, t: float) -> tuple[np.ndarray, np.ndarray]:
        t2i.min_score = t
        fid, top = [], []
        for i in range(0, len(flat), 200):
            chunk = flat[i : i + 200]
            res, _ = t2i.generate([ImageRequest(prompt=p, seed=s, mode=mode) for p, s in chunk])  # type: ignore[arg-type]
            rows = score_images(np.stack([r.image for r in res]), [p for p, _ in chunk], workers=1)
            fid += [r["overall"] for r in rows]
            top += [r.retrieved[0].score if r.retrieved else np.nan for r in res]
        return np.array(fid).reshape(-1, a.seeds).mean(1), np.array(top).reshape(-1, a.seeds)[:, 0]

    base, top1 = run("adapter", 0.0)
    off, _ = run("off", 0.0)
    out: dict[str, object] = {"n_prompts": len(prompts), "seeds": a.seeds, "adapter_t0": float(base.mean()),
                              "off": float(off.mean()), "rows": []}
    print(f"adapter t=0: {100 * base.mean():.1f}  off: {100 * off.mean():.1f}  "
          f"adapter-off {paired_bootstrap(base, off)}")
    for t in ts:
        if t == 0.0:
            continue
        fid, _ = run("adapter", t)
        changed = top1 < t
        row = {"threshold": t, "changed": int(changed.sum()), "all": float(fid.mean()),
               "all_vs_t0": paired_bootstrap(fid, base),
               "changed_t": float(fid[changed].mean()), "changed_t0": float(base[changed].mean()),
               "changed_off": float(off[changed].mean()),
               "changed_vs_t0": paired_bootstrap(fid[changed], base[changed])}
        out["rows"].append(row)  # type: ignore[attr-defined]
        print(json.dumps(row))
    t2i.close()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
