"""Issue 13's recipe: a UNet whose H-space carries the caption, retrieval with a job, controls.

Stages (each resumable: ``<work>/<stage>/done.json``):

* ``base``    — copy the VAE, text encoder and tokenizer of a base model dir (the first
  family's, trained on 60 000 renders; reused as they are);
* ``teacher`` — the teacher UNet (``family.unet_layout``) on the *natural* split: every
  (colour, shape) pair at its natural rate, so the teacher knows the long tail;
* ``skewed``  — a second teacher on the ``skewed`` split (rare pairs kept with p = 0.03,
  no scene with a ``HELD_OUT_RARE`` pair): the student's initialisation, so the student
  never meets the held-out pairs (``extra["student_init"] = "teacher"`` skips it and starts
  the student from the natural teacher, as the first issue-13 run did);
* ``student`` — the one-step student, from the skewed teacher's weights, distilled from the
  natural teacher's samples on the ``skewed`` split's prompts: the student lacks the tail;
* ``export``  — ``<work>/model`` (student + zero H-adapter);
* ``arms``    — paired teacher targets for ``adapter``-split prompts (natural rate, no
  prompt naming one of the four ``HELD_OUT_RARE`` pairs), retrieval over the retrieval
  split, then ``lab.toyworld.arms.train_arms`` (adapter / real / control / control_plain /
  shuffled / leak; the swap curriculum: ``extra["swap_frac"]``), each exported to ``<work>/<arm>_model`` and as ``<work>/variants/<arm>.safetensors``
  (decoder + adapter: what ships and what comes back from a GPU machine);
* ``eval``    — ``toyworld.fideval.evaluate`` -> ``<work>/eval.json`` + ``eval.md``;
* ``probe``   — ``lab.toyworld.probe.probe`` on the student (and the adapter arm) -> ``probe.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from engines.default_model import SHIPPED
from lab.toyworld.recipes import RecipeState, _done, _mark, start_run
from toyworld.models.configs import FamilyConfig, get_family
from toyworld.models.export import export_model_dir, save_fp16

log = logging.getLogger(__name__)

STAGES = ("base", "teacher", "skewed", "student", "export", "arms", "eval", "probe")
EXTRA_KEYS = ("n_adapter", "lr_decoder", "leak_frac", "swap_frac", "swap_detach", "train_k", "decoder_delay",
              "checkpoint_s", "adapter_start", "shuffle_frac", "query_gate")
"""Numeric ``--set`` keys that go to ``FamilyConfig.extra`` (read by the arm stage)."""
DEFAULT_BASE = SHIPPED  # toyworld/assets/model, declared once in engines.default_model


def _state(cfg: FamilyConfig, work: Path, device: torch.device, split: str, n: int, start: int = 0,
           images: bool = True) -> RecipeState:
    from toyworld.models.data import make_split

    st = RecipeState(cfg=cfg, work=work, device=device)
    t0 = time.perf_counter()
    st.cache["train"] = make_split(split, n, start=start, images=images)
    st.cache["data_s"] = time.perf_counter() - t0
    return st


def stage_base(cfg: FamilyConfig, work: Path, base: Path) -> dict[str, Any]:
    """``base``: a model dir (vae/, text_encoder/, tokenizer/) or a recipe work dir (vae/, text/...)."""
    layout = (("vae", "vae"), ("text_encoder", "text/text_encoder"), ("tokenizer", "text/tokenizer"))
    if not (base / "text_encoder").is_dir():
        layout = (("vae", "vae"), ("text/text_encoder", "text/text_encoder"), ("text/tokenizer", "text/tokenizer"))
    for src, dst in layout:
        shutil.rmtree(work / dst, ignore_errors=True)
        shutil.copytree(base / src, work / dst, ignore=shutil.ignore_patterns(".fingerprint-cache.json"))
    return {"stage": "base", "from": str(base)}


def stage_teacher(cfg: FamilyConfig, work: Path, dev: torch.device, limit: float | None,
                  split: str = "natural", dest: str = "teacher") -> dict[str, Any]:
    """A teacher UNet on ``split`` -> ``<work>/<dest>/unet`` (``natural``: the targets'
    teacher; ``skewed``: the student's initialisation)."""
    from lab.toyworld.models.teacher_train import train_teacher
    from toyworld.models.data import HELD_OUT_RARE

    st = _state(cfg, work, dev, split, cfg.n_train)
    ctx, _, unc = st.text_features()
    unet, lg = train_teacher(cfg, st.latents(), ctx, unc, dev, limit)
    save_fp16(unet, work / dest / "unet")
    held = sum(bool(set(s.colour_shape_pairs()) & HELD_OUT_RARE) for s in st.train_split().specs)
    return {**lg.summary(), "split": split, "n": cfg.n_train, "data_s": round(st.cache["data_s"], 1),
            "long_tail_items": int(st.train_split().long_tail.sum()), "held_out_rare_items": held}


def _student_init(cfg: FamilyConfig, work: Path) -> str:
    return "skewed" if cfg.extra.get("student_init", "skewed") == "skewed" else "teacher"


def stage_student(cfg: FamilyConfig, work: Path, dev: torch.device, limit: float | None) -> dict[str, Any]:
    from lab.toyworld.models.student import distill_student
    from lab.toyworld.recipes import teacher_targets

    init = _student_init(cfg, work)
    split = "skewed" if init == "skewed" else "train"
    st = _state(cfg, work, dev, split, cfg.n_distill)
    t0 = time.perf_counter()
    noise, targets = teacher_targets(st)  # the natural teacher's samples
    sample_s = time.perf_counter() - t0
    ctx, pooled, _ = st.text_features()
    student, lg = distill_student(cfg, st.load(init), noise, targets, ctx, pooled, st.latents(), pooled, dev, limit)
    save_fp16(student, work / "student" / "unet")
    return {**lg.summary(), "teacher_sampling_s": round(sample_s, 2), "split": split, "init": init,
            "n_distill": len(noise), "long_tail_items": int(st.train_split().long_tail.sum())}


def stage_arms(cfg: FamilyConfig, work: Path, dev: torch.device, limit: float | None,
               arms: tuple[str, ...]) -> dict[str, Any]:
    from engines.pipeline import OneStepPipeline
    from lab.toyworld.arms import ArmData, self_features, train_arms
    from lab.toyworld.recipes import ADAPTER_NOISE_SEED
    from toyworld.fideval import Database
    from toyworld.models.data import HELD_OUT_RARE
    from toyworld.models.teacher import sample

    t0 = time.perf_counter()
    n = cfg.extra.get("n_adapter", cfg.n_distill)
    start = int(cfg.extra.get("adapter_start", 0))  # a continued run can train on rows it never saw
    st = _state(cfg, work, dev, "adapter", n, start, images=False)  # targets are the teacher's, not renders
    sp = st.train_split()
    named = sum(bool(set(s.colour_shape_pairs()) & HELD_OUT_RARE) for s in sp.specs)
    if named:
        raise AssertionError(f"{named} adapter prompts name a held-out rare pair")
    pipe = OneStepPipeline.from_pretrained(work / "model", device=dev)
    ctx, pooled, unc = st.text_features()
    noise = pipe.initial_noise([ADAPTER_NOISE_SEED + start + i for i in range(n)]).float()
    teacher = st.load("teacher")
    bs = 2048 if dev.type == "cuda" else 64
    parts = []
    for i in range(0, n, bs):
        parts.append(sample(teacher, ctx[i : i + bs], unc, noise[i : i + bs], cfg.teacher_steps, cfg.guidance))
        if (i // bs) % 20 == 19:
            log.info("arms: teacher targets %d / %d (%.0f s)", i + bs, n, time.perf_counter() - t0)
    targets = torch.cat(parts)
    del parts
    sample_s = time.perf_counter() - t0
    db = Database.build(pipe, cfg.n_retrieval)
    k = int(cfg.extra.get("train_k", 1))
    lam, idx = db.search(pooled, k)
    swap_frac = float(cfg.extra.get("swap_frac", 0.0))
    ctx_swap = None
    if swap_frac > 0:
        from lab.toyworld.models.text import encode_all
        from lab.toyworld.swaps import swapped_captions
        from toyworld.models.common import tokenize

        swapped = swapped_captions(sp.captions, cfg.seed + 17, HELD_OUT_RARE)
        ctx_swap, _ = encode_all(st.load("text"), tokenize(st.tokenizer(), swapped), dev)
        ctx_swap = ctx_swap.to(dev)
    leak_frac = float(cfg.extra.get("leak_frac", 0.0))
    h_self = self_features(pipe, targets, ctx).to(dev) if "leak" in arms or leak_frac > 0 else None
    data = ArmData(noise=noise, target=targets, context=ctx, h_nb=db.features[idx].to(dev),
                   lam=lam.to(dev), h_self=h_self, context_swap=ctx_swap)
    prep_s = time.perf_counter() - t0
    run = cfg.adapter

    def checkpoint(step: int, arms_now: dict[str, Any]) -> None:
        for a, arm in arms_now.items():
            save_arm_variant(arm.unet.unet, arm.hadapter, work / "variants" / f"{a}.safetensors")
        losses = {a: arm.log.last() for a, arm in arms_now.items()}
        tmp = work / "variants" / "progress.json.tmp"
        tmp.write_text(json.dumps({"step": step, "wall_s": round(time.perf_counter() - t0, 1), "loss": losses}))
        tmp.replace(work / "variants" / "progress.json")
        log.info("arms: checkpoint at step %d, loss %s", step, losses)

    out, summ = train_arms(pipe, data, arms, run.steps, run.batch_size, run.lr,
                           float(cfg.extra.get("lr_decoder", 3e-5)), dev, limit, cfg.seed, run.log_every,
                           leak_frac, swap_frac,
                           bool(cfg.extra.get("swap_detach", 0)), arm_init(cfg, arms),
                           float(cfg.extra.get("decoder_delay", 0.0)),
                           checkpoint, float(cfg.extra.get("checkpoint_s", 120.0)),
                           float(cfg.extra.get("shuffle_frac", 0.0)))
    checkpoint(summ["steps"], out)
    for a, arm in out.items():
        tmp = work / f"{a}_unet"
        save_fp16(arm.unet.unet, tmp / "unet")
        export_model_dir(work, work / f"{a}_model", cfg, hadapter=arm.hadapter)
        shutil.rmtree(work / f"{a}_model" / "unet")
        shutil.copytree(tmp / "unet", work / f"{a}_model" / "unet")
        shutil.rmtree(tmp)
        meta = json.loads((work / f"{a}_model" / "ragturbo.json").read_text())
        meta["variant"] = a
        (work / f"{a}_model" / "ragturbo.json").write_text(json.dumps(meta, indent=2))
    return {**summ, "n_adapter": n, "adapter_start": start, "teacher_sampling_s": round(sample_s, 1), "prep_s": round(prep_s, 1),
            "lam_mean": float(lam[:, 0].mean()), "train_k": k, "arms": list(arms)}


def arm_init(cfg: FamilyConfig, arms: tuple[str, ...]) -> dict[str, Path] | None:
    """``--arm-init DIR``: every arm starts from ``DIR/<arm>.safetensors`` (an earlier run's
    variants); a missing file is an error, not a fresh start."""
    d = cfg.extra.get("arm_init")
    if not d:
        return None
    files = {a: Path(d) / f"{a}.safetensors" for a in arms}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"--arm-init {d}: no variant file for {missing}")
    return files


def seed_teacher(cfg: FamilyConfig, work: str | Path, teacher_unet: Path, base: Path = DEFAULT_BASE) -> None:
    """Mark ``base`` (from ``base``) and ``teacher`` (a copy of ``teacher_unet``, a natural-split
    teacher UNet dir) done in ``work``, so the run trains only the skewed teacher, the student
    and what follows: the targets' teacher need not be retrained for every arm experiment."""
    w = Path(work)
    w.mkdir(parents=True, exist_ok=True)
    if not (teacher_unet / "config.json").is_file():
        raise FileNotFoundError(f"no teacher UNet at {teacher_unet} (config.json missing)")
    _mark(w, "base", stage_base(cfg, w, base))
    shutil.rmtree(w / "teacher" / "unet", ignore_errors=True)
    shutil.copytree(teacher_unet, w / "teacher" / "unet")
    _mark(w, "teacher", {"stage": "teacher", "from": str(teacher_unet)})


def seed_from_shipped(cfg: FamilyConfig, work: str | Path, teacher_unet: Path,
                      model: Path | None = None, student_variant: Path | None = None,
                      student_unet: Path | None = None) -> None:
    """Start ``work`` from the shipped student (``toyworld/assets/model`` with the shipped
    ``eval/student.safetensors`` decoder: issue 13's first run, initialised from the natural
    teacher) and a natural-split teacher UNet dir (targets): stages ``base`` .. ``student``
    are marked done, so ``export``, ``arms``, ``eval`` and ``probe`` run on them.
    ``student_unet``: a student UNet dir of an earlier run instead (e.g. the fifth run's)."""
    from engines.pipeline import OneStepPipeline
    from toyworld.fideval import ASSETS, apply_variant

    w = Path(work)
    model = model or SHIPPED
    student_variant = student_variant or ASSETS / "eval" / "student.safetensors"
    seed_teacher(cfg, w, teacher_unet, model)
    _mark(w, "skewed", {"stage": "skewed",
                        "skipped": f"student from {student_unet}" if student_unet else "student from the shipped model"})
    if student_unet is not None:
        if not (student_unet / "config.json").is_file():
            raise FileNotFoundError(f"no student UNet at {student_unet} (config.json missing)")
        shutil.rmtree(w / "student" / "unet", ignore_errors=True)
        shutil.copytree(student_unet, w / "student" / "unet")
        _mark(w, "student", {"stage": "student", "from": str(student_unet)})
        return
    pipe = OneStepPipeline.from_pretrained(model)
    apply_variant(pipe, student_variant)
    save_fp16(pipe.unet.unet, w / "student" / "unet")
    _mark(w, "student", {"stage": "student", "from": f"{model} + {student_variant}"})


def save_arm_variant(unet: torch.nn.Module, hadapter: torch.nn.Module, path: Path) -> Path:
    """An arm's decoder + adapter weights as one fp16 file (``toyworld.fideval`` variant format)."""
    from types import SimpleNamespace

    from toyworld.fideval import save_variant

    return save_variant(SimpleNamespace(unet=SimpleNamespace(unet=unet), hadapter=hadapter), path)


def restore_arms(work: str | Path) -> list[str]:
    """Rebuild ``<work>/<arm>_model`` from ``<work>/model`` + ``<work>/variants/<arm>.safetensors``
    where the dir is missing (a GPU run sends back only the variant files)."""
    from engines.pipeline import OneStepPipeline
    from toyworld.fideval import apply_variant

    w = Path(work)
    done = []
    for f in sorted((w / "variants").glob("*.safetensors")):
        d = w / f"{f.stem}_model"
        if d.is_dir():
            continue
        pipe = OneStepPipeline.from_pretrained(w / "model")
        apply_variant(pipe, f)
        tmp = w / f"{f.stem}_model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(w / "model", tmp, ignore=shutil.ignore_patterns(".fingerprint-cache.json", "unet", "hadapter"))
        save_fp16(pipe.unet.unet, tmp / "unet")
        save_fp16(pipe.hadapter, tmp / "hadapter")
        meta = json.loads((tmp / "ragturbo.json").read_text())
        (tmp / "ragturbo.json").write_text(json.dumps({**meta, "variant": f.stem}, indent=2))
        tmp.replace(d)
        done.append(f.stem)
    return done


def run(work: str | Path, family: str | FamilyConfig = "full-mid", stages: tuple[str, ...] = STAGES,
        device: str = "auto", limits: dict[str, float] | None = None, base: Path = DEFAULT_BASE,
        arms: tuple[str, ...] = ("adapter", "real", "control", "control_plain", "shuffled", "leak"), eval_prompts_n: tuple[int, int] = (200, 200),
        seeds: int = 4, probe_n: int = 200, after_stage: Any = None) -> dict[str, Any]:
    """Run (or resume) the stages; ``after_stage(stage, work)`` is called after each (e.g. to pack)."""
    cfg, wd, dev = start_run(work, family, stages, STAGES, device)
    lim = limits or {}
    out: dict[str, Any] = {}
    for stage in STAGES:
        if stage not in stages:
            continue
        prev = _done(wd, stage)
        if prev is not None:
            out[stage] = prev
            continue
        t0 = time.perf_counter()
        log.info("stage %s on %s", stage, dev)
        if stage == "base":
            s = stage_base(cfg, wd, base)
        elif stage == "teacher":
            s = stage_teacher(cfg, wd, dev, lim.get("teacher"))
        elif stage == "skewed":
            if _student_init(cfg, wd) != "skewed":
                s = {"stage": "skewed", "skipped": "student_init=teacher"}
            else:
                s = {**stage_teacher(cfg, wd, dev, lim.get("skewed"), "skewed", "skewed"), "stage": "skewed"}
        elif stage == "student":
            s = stage_student(cfg, wd, dev, lim.get("student"))
        elif stage == "export":
            export_model_dir(wd, wd / "model", cfg)
            meta = json.loads((wd / "model" / "ragturbo.json").read_text())
            (wd / "model" / "ragturbo.json").write_text(json.dumps({**meta, "variant": "student"}, indent=2))
            s = {"stage": "export"}
        elif stage == "arms":
            s = stage_arms(cfg, wd, dev, lim.get("arms"), arms)
        elif stage == "eval":
            from toyworld.fideval import Suite, evaluate, format_table
            from toyworld.models.data import eval_prompts

            prompts, _ = eval_prompts(*eval_prompts_n)
            res = evaluate(prompts, Suite.from_workdir(wd, dev), seeds, cfg.n_retrieval, cfg.teacher_steps, cfg.guidance)
            res["device_name"] = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
            (wd / "eval.json").write_text(json.dumps(res, indent=1))
            (wd / "eval.md").write_text(format_table(res) + "\n")
            log.info("eval:\n%s", format_table(res))
            s = {"stage": "eval", "n_prompts": len(prompts), "seeds": seeds}
        else:
            from lab.toyworld.probe import format_probe, probe
            from toyworld.models.data import eval_prompts

            prompts, _ = eval_prompts(probe_n // 2, probe_n - probe_n // 2)
            ad = wd / "adapter_model"
            res = probe(wd / "model", prompts, 1, ad if ad.is_dir() else None, wd / "teacher" / "unet", str(dev))
            (wd / "probe.json").write_text(json.dumps(res, indent=1))
            log.info("probe:\n%s", format_probe(res))
            s = {"stage": "probe", "n_prompts": len(prompts)}
        s["stage_wall_s"] = round(time.perf_counter() - t0, 2)
        s["device"] = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
        _mark(wd, stage, s)
        out[stage] = s
        if after_stage is not None:
            after_stage(stage, wd)
    (wd / "stages.json").write_text(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "curve" and not isinstance(vv, dict)} for k, v in out.items()}, indent=1))
    return out


_PACK = {"teacher": ("teacher",), "export": ("model",)}
_TAR_MAX = 15 * 2**20  # a GPU machine sends back files of 16 MiB at most (8 files, 64 MiB in all)


def packer(dest: str | Path) -> Any:
    """An ``after_stage`` hook that packs what a GPU machine can send back: ``teacher.tar``,
    ``model.tar`` (the student model dir), ``variants_<i>.tar`` (the arms' decoder + adapter
    files, grouped to stay under 16 MiB a file) and ``results.tar`` (every done.json,
    stages/eval/probe JSON, family.json), refreshed after each stage so a later stage that runs
    out of time loses nothing before it; ``restore_arms`` rebuilds the arm model dirs."""
    import tarfile

    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)

    def hook(stage: str, work: Path) -> None:
        for d in _PACK.get(stage, ()):
            if (work / d).is_dir():
                with tarfile.open(out / f"{d}.tar", "w") as tar:
                    tar.add(work / d, arcname=d, filter=lambda ti: None if ti.name.endswith("done.json") else ti)
        if stage == "arms":
            groups: list[list[Path]] = [[]]
            for f in sorted((work / "variants").glob("*.safetensors")):
                if groups[-1] and sum(x.stat().st_size for x in groups[-1]) + f.stat().st_size > _TAR_MAX:
                    groups.append([])
                groups[-1].append(f)
            for i, g in enumerate(groups):
                with tarfile.open(out / f"variants_{i}.tar", "w") as tar:
                    for f in g:
                        tar.add(f, arcname=f"variants/{f.name}")
        with tarfile.open(out / "results.tar", "w") as tar:
            for f in sorted(work.glob("*.json")) + sorted(work.glob("*.md")) + sorted(work.glob("*/done.json")):
                tar.add(f, arcname=str(f.relative_to(work)))

    return hook


def main(argv: list[str] | None = None) -> None:
    """python -m lab.toyworld.fidelity WORK [--family full-mid] [--stages a,b] [--limits teacher=150,...]"""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("work")
    ap.add_argument("--family", default="full-mid")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--limits", default="")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--base", default=str(DEFAULT_BASE))
    ap.add_argument("--arms", default="adapter,real,control,control_plain,shuffled,leak")
    ap.add_argument("--eval-prompts", default="200,200", help="common,long-tail eval prompts")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--probe-n", type=int, default=200)
    ap.add_argument("--pack", default=None, help="tar stage outputs here after each stage")
    ap.add_argument("--set", default="", help="family overrides, e.g. n_train=2000,n_retrieval=500")
    ap.add_argument("--seed-shipped", default=None, metavar="TEACHER_UNET",
                    help="start from the shipped student and this natural-split teacher UNet dir")
    ap.add_argument("--seed-teacher", default=None, metavar="TEACHER_UNET",
                    help="take this natural-split teacher UNet dir as the teacher stage (train the rest)")
    ap.add_argument("--seed-student", default=None, metavar="STUDENT_UNET",
                    help="with --seed-shipped: this student UNet dir instead of the shipped student")
    ap.add_argument("--arm-init", default=None, metavar="DIR",
                    help="start every arm from DIR/<arm>.safetensors (an earlier run's variants)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = get_family(a.family)
    for kv in (x for x in a.set.split(",") if x):
        k, v = kv.split("=", 1)
        if k in EXTRA_KEYS:
            cfg.extra[k] = float(v) if "." in v or "e" in v else int(v)
        elif k == "student_init":
            cfg.extra[k] = v
        else:  # a family field, or a stage run's (e.g. adapter.steps=200)
            *path, f = k.split(".")
            obj = getattr(cfg, path[0], None) if path else cfg
            if len(path) > 1 or obj is None or not hasattr(obj, f):
                ap.error(f"--set {k}: not a family field nor an extra key ({', '.join(EXTRA_KEYS)}, student_init)")
            setattr(obj, f, type(getattr(obj, f))(v))
    if a.arm_init:
        cfg.extra["arm_init"] = a.arm_init
    if a.seed_student and not a.seed_shipped:
        ap.error("--seed-student needs --seed-shipped (the targets' teacher)")
    if a.seed_shipped:
        seed_from_shipped(cfg, a.work, Path(a.seed_shipped),
                          student_unet=Path(a.seed_student) if a.seed_student else None)
    elif a.seed_teacher:
        seed_teacher(cfg, a.work, Path(a.seed_teacher), Path(a.base))
    limits = {k: float(v) for k, v in (kv.split("=") for kv in a.limits.split(",") if kv)}
    ev = tuple(int(x) for x in a.eval_prompts.split(","))
    res = run(a.work, cfg, tuple(a.stages.split(",")), a.device, limits, Path(a.base),
              tuple(a.arms.split(",")), (ev[0], ev[1]), a.seeds, a.probe_n,
              packer(a.pack) if a.pack else None)
    for k, v in res.items():
        print(k, {kk: vv for kk, vv in v.items() if kk != "curve" and not isinstance(vv, dict)})


if __name__ == "__main__":
    main()
