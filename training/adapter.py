"""The offline adapter training job: latent adversarial training (LADD) of the H-adapter and
an up-block LoRA of the one-step student, with retrieval in the loop (arXiv 2602.12640; docs/training.md).

``train(config) -> TrainResult`` is the Python entry point; ``ragturbo train adapter
--config FILE`` calls it (through ``torchrun`` for several GPUs). One step:

1. a global batch of pairs (order: a function of seed and step), this rank's share;
   target latents z0 (cached VAE means or precomputed teacher latents), caption context
   and pooled embedding from the frozen text encoder;
2. retrieval with the pair itself excluded -> h_retr (B,k,C,h,w), λ (B,k)
   (the control run uses a null neighbour: λ = 0);
3. the student's one-step path -> ẑ0 (``training.model.StudentForward``);
   A row with a ``noise_seed`` (paired teacher sample) gets exactly
   ``pipe.initial_noise([noise_seed])`` as its noise, the ε its target was sampled from;
4. generator: L = w_adv·(-D(q_s(ẑ0))) + 2.5·smoothL1(ẑ0, z0) + 1.0·LPIPS_lat(ẑ0, z0),
   where q_s re-noises at a timestep s uniform over the teacher's steps. The regression
   terms apply to paired rows only (sum over those rows / batch size) unless
   ``loss.unpaired_regression``: unpaired regression pulls ẑ0 to the mean image;
5. discriminator heads: hinge on D(q_s(z0)) (real) vs D(q_s(ẑ0)) (fake, detached).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.checkpoint import LATEST, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from training.config import TrainConfig, config_from_dict, load_config
from training.data import batch_indices, shard
from training.discriminator import hinge_d_loss, hinge_g_loss
from training.dist import (
    barrier,
    gather_objects,
    init_distributed,
    mean_scalars,
    pick_device,
    shutdown,
    wrap_ddp,
)
from training.ema import ParamEMA
from training.job_build import Job, build_job
from training.losses import Augment, latent_perceptual_loss, smooth_l1
from training.retriever import Retriever
from training.schedule import lambda_lr
from training.train_log import TrainLog, TrainResult

log = logging.getLogger(__name__)


def _as_config(config: TrainConfig | dict[str, Any] | str | Path) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config.validate()
    if isinstance(config, dict):
        return config_from_dict(config)
    return load_config(config)


def _sample_generator(seed: int, step: int, pos: int) -> torch.Generator:
    """RNG of one sample: keyed by (seed, step, position in the global batch) only, so the
    draws do not depend on the number of processes or on where a run was resumed."""
    s = int(np.random.SeedSequence([seed, step, pos]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(s & ((1 << 63) - 1))


def _draw(
    cfg: TrainConfig, step: int, positions: range, shape: torch.Size, disc_ts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Augment]:
    """Per-sample noise (B,4,h,w), timestep s (B,), re-noising ε fake/real, augmentation."""
    lc = cfg.loss
    noise, s, eps_f, eps_r, augs = [], [], [], [], []
    for pos in positions:
        g = _sample_generator(cfg.seed, step, pos)
        noise.append(torch.randn(tuple(shape), generator=g))
        s.append(disc_ts[torch.randint(len(disc_ts), (1,), generator=g)])
        eps_f.append(torch.randn(tuple(shape), generator=g))
        eps_r.append(torch.randn(tuple(shape), generator=g))
        augs.append(Augment.draw(1, tuple(shape[-2:]), g, lc.aug_translate, lc.aug_cutout, lc.aug_flip))
    aug = Augment(
        theta=torch.cat([a.theta for a in augs]),
        mask=None if augs[0].mask is None else torch.cat([a.mask for a in augs]),  # type: ignore[misc]
    )
    return torch.stack(noise), torch.cat(s), torch.stack(eps_f), torch.stack(eps_r), aug


def _disc_timesteps(n_train: int, n_steps: int) -> torch.Tensor:
    if n_steps <= 0:
        return torch.arange(n_train)
    ts = np.round(np.arange(n_train, 0, -n_train / n_steps)).astype(np.int64) - 1
    return torch.as_tensor(np.unique(np.clip(ts, 0, n_train - 1)))


def _renoise(z0: torch.Tensor, s: torch.Tensor, eps: torch.Tensor, acp: torch.Tensor) -> torch.Tensor:
    a = acp[s][:, None, None, None]
    return (a.sqrt() * z0.float() + (1 - a).sqrt() * eps.float()).to(z0.dtype)


def _paired_noise(pipe: Any, noise: torch.Tensor, seeds: list[int | None]) -> torch.Tensor:
    """Replace the drawn noise (B,4,h,w) of rows with a recorded seed by
    ``pipe.initial_noise([seed])`` — the ε their teacher target was sampled from."""
    rows = [j for j, sd in enumerate(seeds) if sd is not None]
    if not rows:
        return noise
    out = noise.clone()
    eps = pipe.initial_noise([int(seeds[j]) for j in rows]).to(out.device, out.dtype)  # type: ignore[arg-type]
    if eps.shape[1:] != out.shape[1:]:
        raise ValueError(f"initial_noise shape {tuple(eps.shape[1:])} != target latent shape {tuple(out.shape[1:])}")
    out[rows] = eps
    return out


def _regression(
    job: Job, lc: Any, x0_hat: torch.Tensor, z0: torch.Tensor, ctx: torch.Tensor, aug: Augment,
    weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth-L1 and latent perceptual loss over the rows with weight 1 (B,), each summed over
    those rows and divided by the batch size (so a fully paired batch gives the plain mean and
    the result does not depend on how the global batch is sharded)."""
    b = x0_hat.shape[0]
    zero = torch.zeros((), device=x0_hat.device)
    keep = weight > 0
    n = int(keep.sum())
    if n == 0:
        return zero, zero
    frac = n / b
    if n == b:
        l1 = smooth_l1(x0_hat, z0, lc.l1_beta)
    else:
        l1 = smooth_l1(x0_hat[keep], z0[keep], lc.l1_beta) * frac
    lp = zero
    if lc.lpips_weight > 0:
        sub = aug if n == b else Augment(
            theta=aug.theta[keep.cpu()], mask=None if aug.mask is None else aug.mask[keep.cpu()])
        xs, zs, cs = (x0_hat, z0, ctx) if n == b else (x0_hat[keep], z0[keep], ctx[keep])
        lp = latent_perceptual_loss(job.tfeats, xs, zs, cs, sub) * frac
    return l1, lp


def train(
    config: TrainConfig | dict[str, Any] | str | Path, retriever: Retriever | None = None
) -> TrainResult:
    """Run (or resume) the job (``loss.objective: regression``: ``training.regression``).
    ``retriever`` overrides ``config.retrieval`` (e.g. an
    in-memory one in tests); the control run ignores it. Returns final losses and paths."""
    cfg = _as_config(config)
    info = init_distributed(cfg.device)
    try:
        if cfg.loss.objective == "regression":
            from training.regression import train_job

            return train_job(cfg, retriever, info)
        return _train(cfg, retriever, info)
    finally:
        shutdown(info)


@dataclass
class _Optim:
    """The two optimisers and schedules (generator: adapter + LoRA; discriminator heads) and the EMA."""

    g_params: list[torch.nn.Parameter]
    d_params: list[torch.nn.Parameter]
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sch_g: Any
    sch_d: Any
    ema: ParamEMA | None

    @staticmethod
    def build(cfg: TrainConfig, job: Job) -> _Optim:
        g_params = [p for _, p in job.gen.trainable()]
        d_params = [p for p in job.heads.parameters() if p.requires_grad]
        oc = cfg.optim
        opt_g = torch.optim.AdamW(g_params, lr=oc.lr, betas=oc.betas, weight_decay=oc.weight_decay)
        opt_d = torch.optim.AdamW(d_params, lr=oc.disc_lr, betas=oc.betas, weight_decay=oc.weight_decay)
        sch_g = lambda_lr(opt_g, oc.warmup_steps)
        sch_d = lambda_lr(opt_d, oc.warmup_steps)
        ema = ParamEMA(job.gen.trainable(), cfg.ema_decay) if cfg.ema_decay is not None else None
        return _Optim(g_params, d_params, opt_g, opt_d, sch_g, sch_d, ema)

    def state(self) -> dict[str, Any]:
        return {"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "sch_g": self.sch_g.state_dict(), "sch_d": self.sch_d.state_dict(),
                "ema": None if self.ema is None else self.ema.state_dict()}

    def load(self, ck: dict[str, Any]) -> None:
        self.opt_g.load_state_dict(ck["opt_g"])
        self.opt_d.load_state_dict(ck["opt_d"])
        self.sch_g.load_state_dict(ck["sch_g"])
        self.sch_d.load_state_dict(ck["sch_d"])
        if self.ema is not None and ck.get("ema") is not None:
            self.ema.load_state_dict(ck["ema"])


def _resume(latest: Path, job: Job, o: _Optim, info: Any, device: torch.device) -> int:
    """Load the latest checkpoint into the job and optimisers; returns its step."""
    ck = load_checkpoint(latest, map_location=device)
    job.load_trainable(ck)
    o.load(ck)
    rngs = ck.get("rng") or []
    if len(rngs) == info.world:
        set_rng_state(rngs[info.rank])
    else:
        log.warning("checkpoint has RNG states of %d ranks, running %d: not restored",
                    len(rngs), info.world)
    start = int(ck["step"])
    log.info("resumed from %s at step %d", latest, start)
    return start


def _train(cfg: TrainConfig, retriever: Retriever | None, info: Any) -> TrainResult:
    if cfg.batch_size % info.world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {info.world} processes")
    device = pick_device(cfg.device, info)
    out = Path(cfg.output_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
    torch.manual_seed(cfg.seed)
    job: Job = build_job(cfg, device, retriever)
    # DistributedDataParallel (one process: the modules themselves): rank 0's weights are
    # broadcast at wrapping, gradients are averaged over ranks during each backward.
    gen, heads = wrap_ddp(job.gen, info, device), wrap_ddp(job.heads, info, device)
    o = _Optim.build(cfg, job)

    latest = out / LATEST
    start = _resume(latest, job, o, info, device) if cfg.resume and latest.is_file() else 0
    if start >= cfg.steps:
        log.info("nothing to do: checkpoint step %d >= steps %d", start, cfg.steps)

    csv_path = out / "log.csv"
    writer = TrainLog(csv_path, start, info.is_main)
    acp = job.pipe.alphas_cumprod.to(device, torch.float32)  # ᾱ_t (T,)
    disc_ts = _disc_timesteps(len(acp), cfg.loss.disc_t_steps)
    history: list[dict[str, float]] = []
    final: dict[str, float] = {}
    last_ckpt = latest
    bar = None
    if cfg.progress and info.is_main and start < cfg.steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train adapter", unit="step")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_last = time.perf_counter()
    for step in range(start, cfg.steps):
        row = _step(cfg, job, gen, heads, o, info, device, acp, disc_ts, step)
        done = step + 1
        if not all(math.isfinite(v) for v in row.values()):
            raise FloatingPointError(f"non-finite loss at step {done}: {row}")
        if done % cfg.log_every == 0 or done == cfg.steps:
            row = mean_scalars(row, info, device)
            now = time.perf_counter()
            row["sec_per_step"] = (now - t_last) / (done % cfg.log_every or cfg.log_every)
            t_last = now
            writer.write(done, row)
        final = {"step": float(done), **row}
        history.append(final)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(g=f"{row['loss_g']:.3f}", d=f"{row['loss_d']:.3f}")
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            rngs = gather_objects(rng_state(), info)
            if info.is_main:
                state = job.trainable_state()
                state.update(step=done, config=cfg.to_dict(), **o.state(), rng=rngs, world=info.world)
                last_ckpt = save_checkpoint(out, done, state, cfg.keep_checkpoints)
            barrier(info)
    if bar is not None:
        bar.close()
    writer.close()
    result = TrainResult(
        steps=cfg.steps, final=final, output_dir=out, checkpoint=last_ckpt, log_csv=csv_path,
        control=cfg.is_control, trainable=job.trainable_counts(), history=history,
        peak_gpu_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    )
    if info.is_main:
        (out / "result.json").write_text(json.dumps(result.to_json(), indent=2))
    return result


def _step(cfg: TrainConfig, job: Job, gen: Any, heads: Any, o: _Optim, info: Any, device: torch.device,
          acp: torch.Tensor, disc_ts: torch.Tensor, step: int) -> dict[str, float]:
    """One training step (generator, then discriminator) on this rank's share of the batch;
    returns the step's scalars (``training.train_log.METRICS``)."""
    lc, oc = cfg.loss, cfg.optim
    amp = device.type == "cuda" and cfg.mixed_precision == "bf16"
    k = cfg.retrieval.k if cfg.retrieval is not None else 1
    idx_all = batch_indices(len(job.pairs), cfg.batch_size, step, cfg.seed)
    idx = shard(idx_all, info.rank, info.world)
    z0, ctx, pooled, ids = job.batch(idx)
    b = z0.shape[0]
    h_retr, lam = job.retriever(pooled, k, [frozenset({i}) for i in ids])
    h_retr, lam = h_retr.to(device), lam.to(device)
    first = info.rank * b  # position of this rank's first sample in the global batch
    noise, s, eps_f, eps_r, aug = _draw(cfg, step, range(first, first + b), z0.shape[1:], disc_ts)
    seeds = [job.pairs[int(i)].noise_seed for i in idx]
    noise = _paired_noise(job.pipe, noise, seeds)
    noise, s, eps_f, eps_r = (x.to(device) for x in (noise, s, eps_f, eps_r))
    paired = torch.tensor([sd is not None for sd in seeds], dtype=torch.float32, device=device)
    reg_w = torch.ones_like(paired) if lc.unpaired_regression else paired

    # ---------------- generator step (adapter + LoRA); the heads are frozen for it and
    # called unwrapped, so only the generator's DDP reduces gradients in this backward
    job.heads.requires_grad_(False)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        x0_hat = gen(noise, ctx, h_retr, lam)
        feats_fake, temb = job.tfeats(_renoise(x0_hat, s, eps_f, acp), s, ctx)
        logits_fake = job.heads(feats_fake, pooled, temb)
        adv_g = hinge_g_loss(logits_fake)
        l1, lp = _regression(job, lc, x0_hat, z0, ctx, aug, reg_w)
        loss_g = lc.adv_weight * adv_g + lc.l1_weight * l1 + lc.lpips_weight * lp
    _optimiser_step(loss_g, o.opt_g, o.sch_g, o.g_params, oc.grad_clip)
    if o.ema is not None:
        o.ema.update()

    # ---------------- discriminator step (heads only; teacher frozen)
    job.heads.requires_grad_(True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        with torch.no_grad():
            feats_real, _ = job.tfeats(_renoise(z0, s, eps_r, acp), s, ctx)
        logits_real = heads(feats_real, pooled, temb.detach())
        logits_fake_d = heads([f.detach() for f in feats_fake], pooled, temb.detach())
        loss_d = hinge_d_loss(logits_real, logits_fake_d)
    _optimiser_step(loss_d, o.opt_d, o.sch_d, o.d_params, oc.grad_clip)
    return {
        "loss_g": float(loss_g.detach()), "loss_d": float(loss_d.detach()),
        "adv_g": float(adv_g.detach()), "l1": float(l1.detach()), "lpips": float(lp.detach()),
        "d_real": float(torch.stack([r.float().mean() for r in logits_real]).mean().detach()),
        "d_fake": float(torch.stack([f.float().mean() for f in logits_fake_d]).mean().detach()),
        "lam_mean": float(lam.float().mean()), "paired": float(paired.mean()),
        "lr": float(o.sch_g.get_last_lr()[0]),
    }


def _optimiser_step(loss: torch.Tensor, opt: torch.optim.Optimizer, sched: Any,
                    params: list[torch.nn.Parameter], grad_clip: float | None) -> None:
    """Backward ``loss`` into ``params``, clip their norm (when ``grad_clip``), step, advance the schedule."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    sched.step()
