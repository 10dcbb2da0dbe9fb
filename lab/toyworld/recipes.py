"""The first toy-world family's recipe (not shipped; its VAE and text encoder are the base the
shipped family's run, ``lab.toyworld.fidelity``, copies): data -> VAE -> text encoder ->
teacher -> student -> export -> adapter + control (``training.adapter.train``, LADD).

``run_recipe(workdir, family)`` runs the stages in order; each writes its weights under
``workdir/<stage>/`` plus a ``done.json`` (steps, wall time, first and final loss) and is
skipped when that file exists, so a killed run resumes. Stage weights are fp16
safetensors, loaded back as fp32. Run: ``python -m lab.toyworld.recipes WORKDIR``;
evaluate a work dir with ``python -m lab.toyworld.first_eval``.
"""

from __future__ import annotations

import json
import logging
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import typer

from toyworld.fideval import Database
from toyworld.models.configs import FamilyConfig, get_family
from toyworld.models.export import export_model_dir, save_fp16

log = logging.getLogger(__name__)

ADAPTER_NOISE_SEED = 1_000_000
"""Noise seed of the first adapter target (sample i: + i); clear of the eval seeds (1000·i + j)."""

STAGES = ("vae", "text", "teacher", "student", "export", "adapter", "control")


@dataclass
class RecipeState:
    """What the stages hand each other, built lazily and cached for one process."""

    cfg: FamilyConfig
    work: Path
    device: torch.device
    cache: dict[str, Any] = field(default_factory=dict)

    def train_split(self) -> Any:
        if "train" not in self.cache:
            from toyworld.models.data import make_split

            t0 = time.perf_counter()
            self.cache["train"] = make_split("train", self.cfg.n_train)
            self.cache["data_s"] = time.perf_counter() - t0
        return self.cache["train"]

    def tokenizer(self) -> Any:
        if "tok" not in self.cache:
            from transformers import CLIPTokenizer

            from toyworld.models.common import build_tokenizer

            d = self.work / "text" / "tokenizer"
            self.cache["tok"] = (
                CLIPTokenizer.from_pretrained(str(d), local_files_only=True)
                if (d / "vocab.json").is_file()
                else build_tokenizer(d)
            )
        return self.cache["tok"]

    def input_ids(self) -> torch.Tensor:
        if "ids" not in self.cache:
            from toyworld.models.common import tokenize

            self.cache["ids"] = tokenize(self.tokenizer(), self.train_split().captions)
        return self.cache["ids"]

    def load(self, stage: str) -> Any:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        key = f"model:{stage}"
        if key not in self.cache:
            d = self.work / stage
            if stage == "vae":
                m = AutoencoderKL.from_pretrained(str(d), torch_dtype=torch.float32)
            elif stage == "text":
                m = CLIPTextModel.from_pretrained(str(d / "text_encoder"), dtype=torch.float32)
            else:
                m = UNet2DConditionModel.from_pretrained(str(d / "unet"), torch_dtype=torch.float32)
            self.cache[key] = m.to(self.device).eval().requires_grad_(False)
        return self.cache[key]

    def latents(self) -> torch.Tensor:
        if "lat" not in self.cache:
            from lab.toyworld.models.vae import encode_latents

            self.cache["lat"] = encode_latents(self.load("vae"), self.train_split().images, self.device)
        return self.cache["lat"]

    def text_features(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """context (N,77,D), pooled (N,D) of the train captions and the empty prompt's context (1,77,D)."""
        if "ctx" not in self.cache:
            from lab.toyworld.models.text import encode_all
            from toyworld.models.common import tokenize

            te = self.load("text")
            ctx, pooled = encode_all(te, self.input_ids(), self.device)
            unc, _ = encode_all(te, tokenize(self.tokenizer(), [""]), self.device)
            self.cache["ctx"] = (ctx, pooled, unc)
        return self.cache["ctx"]


def _done(work: Path, stage: str) -> dict[str, Any] | None:
    p = work / stage / "done.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _mark(work: Path, stage: str, summary: dict[str, Any]) -> None:
    (work / stage).mkdir(parents=True, exist_ok=True)
    (work / stage / "done.json").write_text(json.dumps(summary, indent=1))


# ---------------------------------------------------------------- stages
def stage_vae(st: RecipeState, limit: float | None) -> dict[str, Any]:
    from lab.toyworld.models.vae import train_vae

    vae, lg = train_vae(st.cfg, st.train_split().images, st.device, limit)
    save_fp16(vae, st.work / "vae")
    st.cache["model:vae"] = vae.requires_grad_(False)
    return {**lg.summary(), "scaling_factor": float(vae.config.scaling_factor)}


def stage_text(st: RecipeState, limit: float | None) -> dict[str, Any]:
    from lab.toyworld.models.text import attribute_labels, train_text_encoder

    sp = st.train_split()
    tok = st.tokenizer()
    te, lg = train_text_encoder(
        st.cfg, tok, st.input_ids(), sp.images, attribute_labels(sp.specs), st.device, limit
    )
    save_fp16(te, st.work / "text" / "text_encoder")
    tok.save_pretrained(str(st.work / "text" / "tokenizer"))
    st.cache["model:text"] = te.requires_grad_(False)
    return lg.summary()


def stage_teacher(st: RecipeState, limit: float | None) -> dict[str, Any]:
    from lab.toyworld.models.teacher_train import train_teacher

    ctx, _, unc = st.text_features()
    unet, lg = train_teacher(st.cfg, st.latents(), ctx, unc, st.device, limit)
    save_fp16(unet, st.work / "teacher" / "unet")
    st.cache["model:teacher"] = unet.requires_grad_(False)
    return lg.summary()


def teacher_targets(st: RecipeState) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed noise (N,4,h,w) and the teacher's CFG samples from it for the first n_distill prompts."""
    from toyworld.models.teacher import sample

    ctx, _, unc = st.text_features()
    n = min(st.cfg.n_distill, len(ctx))
    ctx = ctx[:n]
    s = st.cfg.latent_size
    noise = torch.randn((n, 4, s, s), generator=torch.Generator().manual_seed(st.cfg.seed + 7)).to(st.device)
    teacher = st.load("teacher")
    bs = 2048 if st.device.type == "cuda" else 64
    out = [
        sample(teacher, ctx[i : i + bs], unc, noise[i : i + bs], st.cfg.teacher_steps, st.cfg.guidance)
        for i in range(0, n, bs)
    ]
    return noise, torch.cat(out)


def stage_student(st: RecipeState, limit: float | None) -> dict[str, Any]:
    from lab.toyworld.models.student import distill_student

    t0 = time.perf_counter()
    noise, targets = teacher_targets(st)
    sample_s = time.perf_counter() - t0
    ctx, pooled, _ = st.text_features()
    n = len(noise)
    student, lg = distill_student(
        st.cfg, st.load("teacher"), noise, targets, ctx[:n], pooled[:n], st.latents(), pooled, st.device, limit
    )
    save_fp16(student, st.work / "student" / "unet")
    st.cache["model:student"] = student.requires_grad_(False)
    return {**lg.summary(), "teacher_sampling_s": round(sample_s, 2), "n_distill": n}


def stage_export(st: RecipeState, limit: float | None) -> dict[str, Any]:
    """Assemble workdir/model (OneStepPipeline layout) from the stage outputs."""
    export_model_dir(st.work, st.work / "model", st.cfg)
    return {"stage": "export", "wall_s": 0.0}


# ---------------------------------------------------------------- adapter + control (the training job)
ADAPTER_MAX_LR = 5e-5
"""Cap on the adapter stage's learning rate (the paper uses 1e-5)."""
def write_teacher_dataset(
    out: Path, student: Path, teacher_unet: Path, captions: list[str], steps: int, guidance: float,
    device: str, seed: int = ADAPTER_NOISE_SEED, batch: int = 256,
) -> Path:
    """Paired targets: teacher samples of ``captions`` from noise seeds seed + i, written as
    ``out/data.parquet`` (exact latents + ``noise_seed``); returns the parquet path."""
    from training.teacher_samples import noise_seeds, sample_teacher, write_dataset

    images, latents = sample_teacher(student, teacher_unet, captions, steps=steps, cfg=guidance,
                                     scheduler="ddim", seed=seed, batch_size=batch, device=device)
    return write_dataset(out, captions, images, latents, "parquet", noise_seeds(seed, len(captions)))


def to_fp16_dir(d: Path) -> None:
    """Rewrite every float32 safetensors file under ``d`` as fp16 (halves the shipped size)."""
    from safetensors.torch import load_file, save_file

    for f in d.rglob("*.safetensors"):
        sd = load_file(str(f))
        save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, str(f), metadata={"format": "pt"})


def stage_adapter(st: Any, control: bool, limit: float | None = None) -> dict[str, Any]:
    """The H-adapter (+ up-block LoRA) with ``training.adapter.train`` on the exported student
    (control=False: retrieval over the retrieval split; True: λ = 0), regressing to paired
    teacher samples; exported to workdir/<stage>_model in fp16."""
    from engines.pipeline import OneStepPipeline
    from training.adapter import train
    from training.export import export_checkpoint
    from training.retriever_db import DbRetriever

    name = "control" if control else "adapter"
    cfg = st.cfg
    work: Path = st.work
    data_dir = work / "adapter_teacher_data"
    n_data = min(len(st.train_split()), cfg.n_distill, 20000)
    if not (data_dir / "data.parquet").is_file():
        sp = st.train_split()
        write_teacher_dataset(data_dir, work / "model", work / "teacher" / "unet", sp.captions[:n_data],
                              cfg.teacher_steps, cfg.guidance, str(st.device))
    retriever = None
    if not control:
        pipe = OneStepPipeline.from_pretrained(work / "model", device=st.device)
        db = Database.build(pipe, cfg.n_retrieval)
        retriever = DbRetriever.in_memory(db.ids, db.pooled, db.features, 0.0)
        del pipe
    run = cfg.adapter
    tc: dict[str, Any] = {
        "student": str(work / "model"),
        "teacher_unet": str(work / "teacher" / "unet"),
        "output_dir": str(work / f"{name}_run"),
        "data": {"path": str(data_dir / "data.parquet"), "format": "parquet"},
        "control": control,
        "steps": run.steps,
        "batch_size": run.batch_size,
        "seed": cfg.seed,
        "lora_rank": 8,
        "optim": {"lr": min(run.lr, ADAPTER_MAX_LR), "disc_lr": min(run.lr, ADAPTER_MAX_LR),
                  "warmup_steps": min(100, run.steps // 10)},
        "loss": {"disc_t_steps": cfg.teacher_steps},
        "log_every": run.log_every,
        "ckpt_every": max(run.steps // 2, 1),
        "progress": False,
        "device": str(st.device),
    }
    if control:
        tc["retrieval"] = None
    res = train(tc, retriever=retriever)
    out = work / f"{name}_model"
    export_checkpoint(res.output_dir, out, student=work / "model", overwrite=True)
    to_fp16_dir(out)
    hist = [(int(h.get("step", i)), float(h.get("loss_g", float("nan")))) for i, h in enumerate(res.history)]
    return {
        "stage": name,
        "steps": res.steps,
        "final": res.final,
        "first_loss_g": hist[0][1] if hist else None,
        "final_loss_g": res.final.get("loss_g"),
        "n_data": n_data,
    }


STAGE_FNS = {
    "vae": stage_vae,
    "text": stage_text,
    "teacher": stage_teacher,
    "student": stage_student,
    "export": stage_export,
}


def pack_stage(work: Path, stage: str, out_dir: Path) -> Path:
    """workdir/<stage> -> out_dir/<stage>.tar (what comes back from the GPU machine)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / f"{stage}.tar"
    with tarfile.open(dst, "w") as tar:
        tar.add(work / stage, arcname=stage)
    return dst


def start_run(
    work: str | Path, family: str | FamilyConfig, stages: tuple[str, ...], known: tuple[str, ...],
    device: str,
) -> tuple[FamilyConfig, Path, torch.device]:
    """What every staged toy-world run does first (this recipe and ``lab.toyworld.fidelity``):
    check the stage names against ``known``, create ``work`` and write its ``family.json``,
    pick the device and allow TF32. Returns (family config, work dir, device)."""
    from toyworld.models.common import pick_device

    cfg = get_family(family) if isinstance(family, str) else family
    bad = [s for s in stages if s not in known]
    if bad:
        raise ValueError(f"unknown stage(s) {bad}; choose from {known}")
    wd = Path(work)
    wd.mkdir(parents=True, exist_ok=True)
    (wd / "family.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return cfg, wd, pick_device(device)


def run_recipe(
    work: str | Path,
    family: str | FamilyConfig = "full",
    stages: tuple[str, ...] = STAGES,
    device: str = "auto",
    time_limits: dict[str, float] | None = None,
    pack_to: str | Path | None = None,
) -> dict[str, Any]:
    """Run (or resume) the stages; returns {stage: summary}. Also writes workdir/stages.json."""
    cfg, wd, dev = start_run(work, family, stages, STAGES, device)
    st = RecipeState(cfg=cfg, work=wd, device=dev)
    summaries: dict[str, Any] = {}
    for stage in STAGES:
        if stage not in stages:
            continue
        prev = _done(wd, stage)
        if prev is not None:
            log.info("stage %s already done (%s); skipping", stage, prev.get("wall_s"))
            summaries[stage] = prev
            continue
        log.info("stage %s on %s", stage, st.device)
        t0 = time.perf_counter()
        if stage in ("adapter", "control"):
            summ = stage_adapter(st, control=stage == "control", limit=(time_limits or {}).get(stage))
        else:
            summ = STAGE_FNS[stage](st, (time_limits or {}).get(stage))
        summ["stage_wall_s"] = round(time.perf_counter() - t0, 2)
        summ["device"] = torch.cuda.get_device_name() if st.device.type == "cuda" else "cpu"
        if "data_s" in st.cache and stage == "vae":
            summ["data_gen_s"] = round(st.cache["data_s"], 2)
        _mark(wd, stage, summ)
        summaries[stage] = summ
        if pack_to is not None:
            pack_stage(wd, stage, Path(pack_to))
    (wd / "stages.json").write_text(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "curve"} for k, v in summaries.items()}, indent=1))
    return summaries


def _recipe_command(
    work: str = typer.Argument(..., help="work directory (one sub-folder per stage)"),
    family: str = typer.Option("full", help="model family"),
    stages: str = typer.Option(",".join(STAGES), help="comma-separated stages to run"),
    pack: str | None = typer.Option(None, help="copy each finished stage's outputs here"),
    limits: str = typer.Option("", help="per-stage time limits in seconds, e.g. vae=60,unet=120"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
) -> None:
    """python -m lab.toyworld.recipes WORKDIR [--family full] [--stages a,b] [--pack DIR] [--limits vae=60,...]"""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    lim = {k: float(v) for k, v in (kv.split("=") for kv in limits.split(",") if kv)}
    res = run_recipe(work, family, tuple(stages.split(",")), device, lim, pack)
    for k, v in res.items():
        print(k, {kk: vv for kk, vv in v.items() if kk != "curve"})


def main(argv: list[str] | None = None) -> None:
    """Run the recipe CLI (typer) on ``argv`` (default: sys.argv[1:])."""
    app = typer.Typer(add_completion=False)
    app.command()(_recipe_command)
    typer.main.get_command(app).main(args=argv, prog_name="python -m lab.toyworld.recipes")


if __name__ == "__main__":
    main()
