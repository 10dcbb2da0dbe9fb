"""A few-row smoke of the concept rows (build, neighbours, arm data) and two training steps."""

def main() -> None:
    import logging
    import sys
    import tempfile
    import time
    from pathlib import Path

    import torch

    logging.basicConfig(level=logging.INFO)
    from toyworld.models.concept_rows import RowOptions
    from toyworld.models.concept_train import train_concepts

    n, workers = int(sys.argv[1]) if len(sys.argv) > 1 else 64, int(sys.argv[2]) if len(sys.argv) > 2 else 0
    t = time.time()
    out = Path(tempfile.mkdtemp())
    s = train_concepts(out, n_rows=n, n_db=256, options=RowOptions(0.4, 0.3, 0.5, True), minutes=0.2, steps=2,
                       batch_size=8, workers=workers)
    print(s["rows"], s["prep_s"], {a: s[a]["steps"] for a in ("adapter", "control")}, round(time.time() - t, 1), "s")
    d, c = torch.load(out / "rows.pt", weights_only=False)
    print(d.h_retr.shape if hasattr(d, "h_retr") else [f for f in vars(d)], c)


if __name__ == "__main__":
    main()
