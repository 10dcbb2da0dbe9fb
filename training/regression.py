"""Teacher-target regression of the H-adapter and the UNet decoder (``loss.objective: regression``).

The objective that made the shipped toy-world adapter (docs/training.md). A row is a paired
target: the noise ε a teacher sample started from, its latent, the caption and the row's
neighbours (H-features, λ); the student's inference path (``StudentForward``) maps them to ẑ0
and the loss is ``smoothL1(ẑ0, target, β)``. Trained: the adapter and the decoder in full (up
blocks, ``conv_norm_out``, ``conv_out``); frozen: UNet encoder, VAE, text encoder. The control
zeroes every neighbour (λ = 0) of the same rows in the same batches. Rows are built once
(:class:`Rows`: from the job's dataset and retriever, or :func:`load_rows`);
``training.adapter.train`` runs :func:`train_job`, Python callers :func:`train_rows`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training import checkpoint as ckpts
from training.config import TrainConfig
from training.data import Pair, batch_indices, read_pairs
from training.ema import ParamEMA
from training.losses import smooth_l1
from training.model import DECODER_PREFIXES, StudentForward
from training.retriever import NullRetriever, Retriever
from training.schedule import lambda_lr
from training.train_log import TrainLog, TrainResult

log = logging.getLogger(__name__)

ROW_KEYS = ("noise", "target", "context", "h_nb", "lam")


@dataclass
class Rows:
    """Training rows: noise ε (N,4,h,w), target latent (N,4,h,w), caption context (N,T,D),
    neighbour H-features (N,k,C,h',w') and λ (N,k); one neighbour may come as (N,C,h',w'), (N)."""

    noise: torch.Tensor
    target: torch.Tensor
    context: torch.Tensor
    h_nb: torch.Tensor
    lam: torch.Tensor

    def __post_init__(self) -> None:
        if self.h_nb.ndim == 4:
            self.h_nb = self.h_nb[:, None]
        if self.lam.ndim == 1:
            self.lam = self.lam[:, None]
        lens = {k: len(getattr(self, k)) for k in ROW_KEYS}
        if len(set(lens.values())) != 1:
            raise ValueError(f"rows disagree in length: {lens}")
        if self.noise.shape != self.target.shape:
            raise ValueError(f"noise {tuple(self.noise.shape)} and target {tuple(self.target.shape)} differ in shape")
        if self.h_nb.ndim != 5 or self.lam.shape != self.h_nb.shape[:2]:
            raise ValueError(f"h_nb (N,k,C,h,w) and lam (N,k) expected; got {tuple(self.h_nb.shape)}, {tuple(self.lam.shape)}")

    def __len__(self) -> int:
        return len(self.noise)

    def to(self, device: torch.device | str) -> Rows:
        return Rows(*(getattr(self, k).to(device, torch.float32) for k in ROW_KEYS))


def save_rows(rows: Rows, path: str | Path) -> Path:
    """Write rows as a ``.pt`` file :func:`load_rows` reads (atomically)."""
    return ckpts.atomic_save({k: getattr(rows, k).detach().cpu() for k in ROW_KEYS}, path)


@torch.no_grad()
def load_rows(path: str | Path, pipe: Any, batch: int = 256) -> Rows:
    """Rows from a ``torch.save`` dict: ``target``, ``h_nb``, ``lam``, and ``noise`` (N,4,h,w)
    or ``noise_seed`` (N ints: ``pipe.initial_noise``), ``context`` (N,T,D) or ``caption``
    (N strings: encoded with ``pipe``'s text encoder)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"rows file {p} does not exist")
    d = torch.load(p, map_location="cpu", weights_only=True)
    need = [("target",), ("h_nb",), ("lam",), ("noise", "noise_seed"), ("context", "caption")]
    missing = [" or ".join(alts) for alts in need if not any(a in d for a in alts)]
    if missing:
        raise ValueError(f"rows file {p} lacks {missing}; has {sorted(d)}")
    noise = d["noise"] if "noise" in d else pipe.initial_noise([int(s) for s in d["noise_seed"]]).cpu()
    caps = list(d.get("caption", []))
    ctx = d["context"] if "context" in d else torch.cat(
        [pipe.encode_text(caps[i : i + batch]).context.float().cpu() for i in range(0, len(caps), batch)])
    return Rows(noise.float(), d["target"].float(), ctx.float(), d["h_nb"].float(), d["lam"].float())


@torch.no_grad()
def rows_from_pairs(pipe: Any, pairs: list[Pair], retriever: Retriever, k: int, batch: int = 256) -> Rows:
    """Rows of paired pairs: noise ``initial_noise([noise_seed])``, the stored (or VAE) target
    latent, the caption's context and the retriever's top-k with the pair itself excluded."""
    from training.job_build import pair_latents

    unpaired = [p.id for p in pairs if p.noise_seed is None]
    if unpaired:
        raise ValueError(f"regression needs paired rows (a noise_seed each): {len(unpaired)} of {len(pairs)} "
                         f"have none, e.g. {unpaired[:3]} (ragturbo train teacher-samples writes them)")
    parts = []
    for lo in range(0, len(pairs), batch):
        chunk = pairs[lo : lo + batch]
        text = pipe.encode_text([p.caption for p in chunk])
        h, lam = retriever(text.pooled, k, [frozenset({p.id}) for p in chunk])
        noise = pipe.initial_noise([int(p.noise_seed) for p in chunk])  # type: ignore[arg-type]
        parts.append((noise.float().cpu(), pair_latents(pipe, chunk), text.context.float().cpu(), h.float(), lam.float()))
    log.info("regression rows: %d (k = %d, λ mean %.3f)", len(pairs), k, float(torch.cat([x[4] for x in parts]).mean()))
    return Rows(*(torch.cat(x) for x in zip(*parts, strict=True)))


class RegressionTrainer:
    """The adapter + decoder of ``pipe``, their optimiser, schedule and (optional) EMA over ``rows``."""

    def __init__(self, pipe: Any, rows: Rows, control: bool, *, steps: int, lr_adapter: float, lr_decoder: float,
                 warmup: int, schedule: Any = "cosine", lr_floor: float = 0.05, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), grad_clip: float | None = 1.0, l1_beta: float = 0.1,
                 seed: int = 0, ema_decay: float | None = None, time_limit_s: float | None = None,
                 amp: bool = True) -> None:
        for m in pipe.modules().values():
            m.requires_grad_(False)
        self.dec = [p for n, p in pipe.unet.unet.named_parameters() if n.startswith(DECODER_PREFIXES)]
        if not self.dec:
            raise ValueError(f"the student UNet has no parameters under {DECODER_PREFIXES}")
        for p in self.dec:
            p.requires_grad_(True)
        pipe.hadapter.requires_grad_(True).train()
        self.ad = list(pipe.hadapter.parameters())
        self.pipe, self.rows, self.control, self.seed = pipe, rows, control, seed
        self.gen = StudentForward(pipe)
        self.device = pipe.device
        self.amp = amp and self.device.type == "cuda"
        self.grad_clip, self.l1_beta = grad_clip, l1_beta
        self.opt = torch.optim.AdamW([{"params": self.dec, "lr": lr_decoder}, {"params": self.ad, "lr": lr_adapter}],
                                     betas=betas, weight_decay=weight_decay)
        self.sched = lambda_lr(self.opt, warmup, steps, schedule, lr_floor, time_limit_s)
        self.ema = ParamEMA(self.gen.trainable(), ema_decay) if ema_decay else None

    def step(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on the batch of ``step``; -> (loss, mean λ), on the device (no sync)."""
        idx = torch.as_tensor(batch_indices(len(self.rows), batch_size, step, self.seed), device=self.device)
        r = self.rows
        h, lam = r.h_nb[idx], r.lam[idx]
        if self.control:
            h, lam = torch.zeros_like(h), torch.zeros_like(lam)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            x0 = self.gen(r.noise[idx], r.context[idx], h, lam)
        loss = smooth_l1(x0, r.target[idx], self.l1_beta)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.dec, self.grad_clip)
            torch.nn.utils.clip_grad_norm_(self.ad, self.grad_clip)
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.ema.update()
        return loss.detach(), lam.mean()

    def state(self) -> dict[str, Any]:
        """The checkpoint entries ``training.export`` and :meth:`load` read."""
        unet = self.pipe.unet.unet
        return {
            "objective": "regression",
            "decoder": {n: t.detach().cpu().clone() for n, t in unet.state_dict().items() if n.startswith(DECODER_PREFIXES)},
            "hadapter": {n: t.detach().cpu().clone() for n, t in self.pipe.hadapter.state_dict().items()},
            "hadapter_config": dict(self.pipe.hadapter.config),
            "lora": {}, "lora_config": {"rank": 0, "alpha": None, "targets": []},
            "opt_g": self.opt.state_dict(), "sch_g": self.sched.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
        }

    def load(self, ck: dict[str, Any]) -> None:
        self.pipe.unet.unet.load_state_dict(ck["decoder"], strict=False)
        self.pipe.hadapter.load_state_dict(ck["hadapter"])
        self.opt.load_state_dict(ck["opt_g"])
        self.sched.load_state_dict(ck["sch_g"])
        if self.ema is not None and ck.get("ema") is not None:
            self.ema.load_state_dict(ck["ema"])

    def run(self, start: int, steps: int, batch_size: int, log_every: int,
            time_limit_s: float | None = None) -> Iterator[tuple[int, float | None, float, bool]]:
        """Steps ``start``..``steps`` or until ``time_limit_s``: yields (steps done, loss and mean λ
        on logged steps (the first, every ``log_every``-th, the last; else None, 0), stop)."""
        t0 = time.perf_counter()
        for step in range(start, steps):
            loss, lam = self.step(step, batch_size)
            done = step + 1
            stop = time_limit_s is not None and time.perf_counter() - t0 > time_limit_s
            if done % log_every == 0 or done in (start + 1, steps) or stop:
                v = float(loss)
                if not math.isfinite(v):
                    raise FloatingPointError(f"non-finite loss at step {done}: {v}")
                yield done, v, float(lam), stop
            else:
                yield done, None, 0.0, stop
            if stop:
                log.info("time limit %.0f s reached at step %d of %d", time_limit_s, done, steps)
                return

    def finish(self) -> None:
        """Leave the trained modules frozen in eval mode (holding the EMA, if any, when ``ema``)."""
        self.pipe.hadapter.eval().requires_grad_(False)
        self.pipe.unet.requires_grad_(False)


def train_rows(
    pipe_or_model_dir: Any, rows: Any, control: bool, steps: int, batch_size: int = 256,
    lr_adapter: float = 3e-4, lr_decoder: float = 3e-5, device: str | torch.device = "auto", *,
    time_limit_s: float | None = None, checkpoint: Callable[[int, Any], None] | None = None,
    checkpoint_every_s: float = 0.0, seed: int = 0, l1_beta: float = 0.1, warmup: int | None = None,
    lr_floor: float = 0.05, log_every: int = 50, ema_decay: float | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train one model (adapter + decoder, or its control: ``control=True``, λ = 0) on
    ``rows`` (:class:`Rows`, an object with its five fields, or a :func:`load_rows` file) for
    ``steps`` steps or ``time_limit_s`` seconds, whichever ends first; warm-up over ``warmup``
    steps (default min(100, steps/10)), then cosine to ``lr_floor``. ``pipe_or_model_dir``: a
    ``OneStepPipeline`` (trained in place: load one per run) or a model directory.
    ``checkpoint(step, pipe)`` is called every ``checkpoint_every_s`` seconds (> 0). Returns the
    pipe (frozen; the EMA's weights with ``ema_decay``) and a summary (steps, wall_s,
    first_loss, final_loss (mean of the last 5 logged), curve of (step, loss))."""
    from engines.pipeline import OneStepPipeline

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if str(device) == "auto" else torch.device(device)
    is_dir = isinstance(pipe_or_model_dir, (str, Path))
    pipe = OneStepPipeline.from_pretrained(pipe_or_model_dir, device=dev) if is_dir else pipe_or_model_dir.to(dev)
    r = load_rows(rows, pipe) if isinstance(rows, (str, Path)) else Rows(*(getattr(rows, k) for k in ROW_KEYS))
    torch.manual_seed(seed)
    tr = RegressionTrainer(pipe, r.to(dev), control, steps=steps, lr_adapter=lr_adapter, lr_decoder=lr_decoder,
                           warmup=warmup if warmup is not None else min(100, max(1, steps // 10)),
                           lr_floor=lr_floor, l1_beta=l1_beta, seed=seed, ema_decay=ema_decay, time_limit_s=time_limit_s)
    curve: list[tuple[int, float]] = []
    t0 = last_ckpt = time.perf_counter()
    for done, v, _, _ in tr.run(0, steps, batch_size, log_every, time_limit_s):
        if v is not None:
            curve.append((done, v))
            log.info("regression%s step %d loss %.5f", " (control)" if control else "", done, v)
        if checkpoint is not None and checkpoint_every_s > 0 and time.perf_counter() - last_ckpt >= checkpoint_every_s:
            checkpoint(done, pipe)
            last_ckpt = time.perf_counter()
    if tr.ema is not None:
        tr.ema.copy_to()
    tr.finish()
    tail = [v for _, v in curve[-5:]]
    return pipe, {"steps": curve[-1][0], "wall_s": round(time.perf_counter() - t0, 2), "control": control,
                  "batch_size": batch_size, "lr_adapter": lr_adapter, "lr_decoder": lr_decoder,
                  "first_loss": curve[0][1], "final_loss": sum(tail) / len(tail), "curve": curve}


def job_rows(cfg: TrainConfig, pipe: Any, retriever: Retriever | None) -> Rows:
    """The job's rows: ``data.rows``, or ``data.path``'s pairs with the configured retriever
    (none for the control run: λ = 0 needs no search)."""
    from training.job_build import build_retriever, index_pairs

    if cfg.data.rows:
        return load_rows(cfg.data.rows, pipe)
    pairs = read_pairs(cfg.data.path, cfg.data.format, cfg.data.max_items)
    r = cfg.retrieval
    if r is None:
        retriever = NullRetriever(pipe.h_shape)
    elif retriever is None:
        own = r.source == "dataset" and not r.path
        retriever = index_pairs(pipe, pairs, r.min_score, 64) if own else build_retriever(cfg, pipe, 64)
    return rows_from_pairs(pipe, pairs, retriever, r.k if r is not None else 1)


def train_job(cfg: TrainConfig, retriever: Retriever | None, info: Any) -> TrainResult:
    """``training.adapter.train`` for ``loss.objective: regression`` (one process)."""
    from engines.pipeline import OneStepPipeline
    from training.dist import pick_device

    if info.world > 1:
        raise ValueError(f"loss.objective 'regression' runs in one process, got {info.world}")
    device, out = pick_device(cfg.device, info), Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
    torch.manual_seed(cfg.seed)
    pipe = OneStepPipeline.from_pretrained(cfg.student, device=device)
    oc = cfg.optim
    tr = RegressionTrainer(pipe, job_rows(cfg, pipe, retriever).to(device), cfg.is_control, steps=cfg.steps,
                           lr_adapter=oc.lr, lr_decoder=oc.decoder_lr, warmup=oc.warmup_steps, schedule=oc.schedule,
                           lr_floor=oc.lr_floor, weight_decay=oc.weight_decay, betas=oc.betas, grad_clip=oc.grad_clip,
                           l1_beta=cfg.loss.l1_beta, seed=cfg.seed, ema_decay=cfg.ema_decay,
                           time_limit_s=cfg.time_limit_s, amp=cfg.mixed_precision == "bf16")
    last, start = out / ckpts.LATEST, 0
    if cfg.resume and last.is_file():
        ck = ckpts.load_checkpoint(last, map_location=device)
        tr.load(ck)
        ckpts.set_rng_state((ck.get("rng") or [ckpts.rng_state()])[0])
        start = int(ck["step"])
        log.info("resumed from %s at step %d", last, start)
    writer = TrainLog(out / "log.csv", start, True)
    bar = None
    if cfg.progress and start < cfg.steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train adapter (regression)", unit="step")
    history: list[dict[str, float]] = []
    t_last, step_last = time.perf_counter(), start
    for done, v, lam, stop in tr.run(start, cfg.steps, cfg.batch_size, cfg.log_every, cfg.time_limit_s):
        if v is not None:
            now = time.perf_counter()
            history.append({"step": float(done), "loss_g": v, "l1": v, "lam_mean": lam, "paired": 1.0,
                            "lr": float(tr.sched.get_last_lr()[-1]),
                            "sec_per_step": (now - t_last) / (done - step_last)})
            t_last, step_last = now, done
            writer.write(done, {k: x for k, x in history[-1].items() if k != "step"})
        if bar is not None:
            bar.update(1)
        if done % cfg.ckpt_every == 0 or done == cfg.steps or stop:
            state = {**tr.state(), "step": done, "config": cfg.to_dict(), "rng": [ckpts.rng_state()], "world": 1,
                     "student": cfg.student}
            last = ckpts.save_checkpoint(out, done, state, cfg.keep_checkpoints)
    if bar is not None:
        bar.close()
    writer.close()
    tr.finish()
    final = history[-1] if history else {}
    result = TrainResult(steps=int(final.get("step", start)), final=final, output_dir=out, checkpoint=last,
                         log_csv=out / "log.csv", control=cfg.is_control, history=history,
                         trainable={"hadapter": sum(p.numel() for p in tr.ad), "decoder": sum(p.numel() for p in tr.dec)},
                         peak_gpu_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None)
    (out / "result.json").write_text(json.dumps(result.to_json(), indent=2))
    return result
