"""`python -m lab.toyworld.ship`: make a fidelity run's winning arm the shipped model
(``toyworld/assets/model``) and write what the evaluation needs (``toyworld/assets/eval``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from engines.default_model import SHIPPED
from engines.vae_decoder import SMALL_DIR
from lab.toyworld.fidelity import restore_arms
from toyworld.vocabulary import write_model_vocabulary


def _small_decoder_to_keep(model_dest: Path, src: Path) -> Path | None:
    """A copy (in a temp dir) of ``model_dest``'s small VAE decoder when ``src`` has none and
    its VAE is the one that decoder was distilled from (its config records the sha256): the
    arms never change the VAE, so the shipped ``vae_small`` stays valid for the new model."""
    import tempfile

    from engines.modeldir import file_sha256
    from engines.vae_decoder import WEIGHTS

    old = model_dest / SMALL_DIR
    if (src / SMALL_DIR).is_dir() or not (old / "config.json").is_file():
        return None
    want = json.loads((old / "config.json").read_text()).get("distilled_from_vae_sha256")
    vae = src / "vae" / WEIGHTS
    if not want or not vae.is_file() or file_sha256(vae) != want:
        return None
    keep = Path(tempfile.mkdtemp()) / SMALL_DIR
    shutil.copytree(old, keep)
    return keep


def ship(work: str | Path, variant: str = "adapter", model_dest: Path | None = None,
         eval_dest: Path | None = None) -> dict[str, Any]:
    """Ship ``<work>/<variant>_model`` (``model`` for the student) as ``toyworld/assets/model``
    and what the evaluation needs as ``toyworld/assets/eval``: one fp16 safetensors file of
    decoder + adapter weights per other variant and the teacher UNet (when the work dir has it)."""
    from engines.pipeline import OneStepPipeline
    from toyworld.fideval import ASSETS, VARIANTS, save_variant

    w = Path(work)
    restore_arms(w)
    model_dest = model_dest or SHIPPED
    eval_dest = eval_dest or ASSETS / "eval"
    src = w / ("model" if variant == "student" else f"{variant}_model")
    if not src.is_dir():
        raise FileNotFoundError(f"no {src} to ship")
    small = _small_decoder_to_keep(model_dest, src)
    shutil.rmtree(model_dest, ignore_errors=True)
    shutil.copytree(src, model_dest, ignore=shutil.ignore_patterns(".fingerprint-cache.json"))
    if small is not None:
        shutil.copytree(small, model_dest / SMALL_DIR)
        shutil.rmtree(small.parent)
    meta = json.loads((model_dest / "ragturbo.json").read_text())
    (model_dest / "ragturbo.json").write_text(json.dumps({**meta, "variant": variant}, indent=2))
    (model_dest / ".gitignore").write_text(".fingerprint-cache.json\n")
    write_model_vocabulary(model_dest)  # the words its training captions hold (unknown_words)
    shutil.rmtree(eval_dest, ignore_errors=True)
    eval_dest.mkdir(parents=True)
    shipped: list[str] = []
    for v in VARIANTS:
        d = w / ("model" if v == "student" else f"{v}_model")
        if v == variant or not d.is_dir():
            continue
        save_variant(OneStepPipeline.from_pretrained(d), eval_dest / f"{v}.safetensors")
        shipped.append(v)
    if (w / "teacher" / "unet").is_dir():
        shutil.copytree(w / "teacher" / "unet", eval_dest / "teacher_unet")
        shipped.append("teacher")
    return {"model": str(model_dest), "variant": variant, "eval": shipped}


PLAIN_FALLBACK = {"control_plain": "control"}
"""Arms that continue another shipped arm when they have no file of their own (the shipped
control trained without the swap curriculum, i.e. it is a ``control_plain``)."""


def shipped_variants(dest: str | Path, arms: tuple[str, ...], model: Path | None = None,
                     eval_dir: Path | None = None) -> dict[str, str]:
    """The inverse of :func:`ship`, for ``--arm-init``: one variant file per arm in ``dest``,
    so a run continues exactly what ships. ``adapter`` (and ``real``, which trains the same
    rows without a curriculum) start from the shipped model's own decoder + adapter; every
    other arm from its ``toyworld/assets/eval/<arm>.safetensors``, and ``control_plain`` (no
    file of its own) from ``control.safetensors``: the shipped control trained on plain rows
    (``swap_frac`` 0), which is what ``control_plain`` is; an arm with none of these is an
    error, not a fresh start. -> arm -> where its weights came from."""
    from engines.pipeline import OneStepPipeline
    from toyworld.fideval import ASSETS, save_variant

    model = model or SHIPPED
    eval_dir = eval_dir or ASSETS / "eval"
    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    shipped_as = json.loads((model / "ragturbo.json").read_text()).get("variant", "adapter")
    src: dict[str, str] = {}
    own: Path | None = None  # the shipped model's own variant file, written once
    for a in arms:
        f = eval_dir / f"{a}.safetensors"
        if a in PLAIN_FALLBACK and not f.is_file():
            f = eval_dir / f"{PLAIN_FALLBACK[a]}.safetensors"
        if a in (shipped_as, "real") and not f.is_file():
            if own is None:
                own = save_variant(OneStepPipeline.from_pretrained(model), d / f"{a}.safetensors")
            else:
                shutil.copyfile(own, d / f"{a}.safetensors")
            src[a] = str(model)
        elif f.is_file():
            shutil.copyfile(f, d / f"{a}.safetensors")
            src[a] = str(f)
        else:
            raise FileNotFoundError(f"no shipped weights for arm {a!r}: neither {model} ({shipped_as}) nor {f}")
    return src


def main(argv: list[str] | None = None) -> None:
    """python -m lab.toyworld.ship --work WORK [--variant adapter]: ship a run's winning arm;
    python -m lab.toyworld.ship --variants DEST ARM,ARM: the shipped arms' variant files (the
    GPU driver's --arm-init)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m lab.toyworld.ship", description=main.__doc__)
    ap.add_argument("--work", help="work dir of a lab.toyworld.fidelity run: ship its --variant")
    ap.add_argument("--variant", default="adapter", help="student, adapter, control, shuffled or leak")
    ap.add_argument("--variants", metavar="DEST", help="write the shipped arms' variant files here")
    ap.add_argument("arms", nargs="?", help="with --variants: comma-separated arms, e.g. adapter,control")
    ns = ap.parse_args(argv)
    if ns.work:
        print(json.dumps(ship(ns.work, ns.variant)))
    elif ns.variants and ns.arms:
        print(json.dumps(shipped_variants(ns.variants, tuple(ns.arms.split(","))), indent=2))
    else:
        ap.error("give --work WORK, or --variants DEST ARMS")


if __name__ == "__main__":
    main()
