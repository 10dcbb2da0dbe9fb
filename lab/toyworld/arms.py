"""The toy world's adapter experiments: several arms trained side by side on one batch stream.

The shipped recipe (the plain adapter arm and its λ = 0 control) is the product's training job
(``training.regression``, ``training/recipes/toy-adapter.yaml``); this loop keeps the unshipped
arms and curricula of the runs in lab/archive/toyworld-models.md, one encoder pass shared by all.

Every arm starts from the same one-step student and trains an H-adapter plus the student's
decoder (up blocks, ``conv_norm_out``, ``conv_out``) on the same paired teacher targets
(the teacher's CFG sample from the very noise the student is fed), with the same noise, the
same batches and the same schedule; they differ only in what the adapter is given:

* ``adapter``  — the top-1 neighbour of the prompt in the retrieval split (H-features of its
  clean latent through the student's encoder at t = 0 with its caption), λ = cosine score;
  with the *swap curriculum* (captions from ``lab.toyworld.swaps``): on a fraction ``swap_frac`` of the
  rows (drawn afresh each step) the student's encoder reads a caption with one colour or
  shape swapped, while the neighbour and the target stay those of the true caption, so the
  neighbour's content is the only way to the right attribute; optionally a *leak
  curriculum* too (``leak_frac``: the neighbour is the target itself, with the real λ);
  and a *shuffle curriculum* (``shuffle_frac``: the row gets another row's neighbour with
  its own true λ, so the adapter must learn to tell a neighbour that agrees with the query
  from one that does not, and to fall back to the text path on the latter);
* ``real``     — real neighbours, no curriculum (plain rows only);
* ``control``  — no neighbour (λ = 0), the same rows as ``adapter`` (swaps included): the
  same fine-tuning with retrieval switched off;
* ``control_plain`` — no neighbour, plain rows only: the best retrieval-free fine-tune
  (the swaps can only hurt an arm that cannot see a neighbour);
* ``shuffled`` — another prompt's neighbour (the batch rolled by one), with the true λ:
  the adapter's capacity and magnitudes without the right content;
* ``leak``     — the target itself (its latent's H-features at t = 0, λ = 1), swaps
  included: an upper bound that says whether the pathway can carry content at all.

The encoder is frozen and shared (the retrieval features stay valid for every arm), so one
encoder pass per batch and caption kind (swapped rows, plain rows) serves all arms.
Loss: smooth-L1 (β = 0.1) between x̂0 and the
target, as the student's distillation; no adversarial term (a deviation from the paper's
LADD objective, which ``training.adapter`` keeps).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from lab.toyworld.models.common import LossLog, out_of_time
from toyworld.models.common import autocast
from toyworld.models.variants import DECODER_PREFIXES, load_variant
from training.schedule import lambda_lr

log = logging.getLogger(__name__)

ARMS = ("adapter", "real", "control", "control_plain", "shuffled", "leak")
PLAIN_ARMS = frozenset({"real", "control_plain"})
"""Arms that never see a swapped caption."""


@dataclass
class ArmData:
    """Adapter-training rows on one device: noise (N,4,h,w), target x0 (N,4,h,w), caption
    context (N,T,D), neighbour H (N,C,h',w') and λ (N,) — or the top-k neighbours, (N,k,C,h',w')
    and (N,k) —, the target's own H (N,C,h',w'; None when no arm reads it: only the ``leak``
    arm and the leak curriculum do), and the context of each row's swapped caption (N,T,D) or
    None (no swap curriculum)."""

    noise: torch.Tensor
    target: torch.Tensor
    context: torch.Tensor
    h_nb: torch.Tensor
    lam: torch.Tensor
    h_self: torch.Tensor | None
    context_swap: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.h_nb.ndim == 4:  # one neighbour a row
            self.h_nb, self.lam = self.h_nb[:, None], self.lam[:, None]
        if self.h_nb.ndim != 5 or self.lam.shape != self.h_nb.shape[:2]:
            raise ValueError(f"h_nb (N,k,C,h,w) and lam (N,k) expected; got {tuple(self.h_nb.shape)}, {tuple(self.lam.shape)}")

    @property
    def k(self) -> int:
        return self.h_nb.shape[1]

    def __len__(self) -> int:
        return len(self.noise)


@dataclass
class Arm:
    name: str
    unet: torch.nn.Module  # HSplitUNet (its own decoder copy)
    hadapter: torch.nn.Module
    log: LossLog = field(default_factory=lambda: LossLog("arm"))


def decoder_params(unet: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Parameters of the decoder half of a diffusers UNet (what the arms fine-tune)."""
    return [p for n, p in unet.named_parameters() if n.startswith(DECODER_PREFIXES)]


def neighbours_for(name: str, d: ArmData, idx: torch.Tensor, leak: torch.Tensor | None = None,
                   shuffle: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> h_retr (B,k,C,h,w), λ (B,k) that arm ``name`` sees for rows ``idx`` (k = ``d.k``;
    ``leak``: one, the target); ``leak`` (B,) bool marks the rows whose neighbours the
    ``adapter`` arm's curriculum replaces by the target (every one of the k); ``shuffle`` (B,)
    bool the rows whose neighbours it replaces by the next row's (the batch rolled by one),
    keeping the row's own λ."""
    h, lam = d.h_nb[idx], d.lam[idx]
    if name == "adapter" and shuffle is not None:
        h = torch.where(shuffle.view(-1, 1, 1, 1, 1), h.roll(1, 0), h)
    if name == "adapter" and leak is not None:
        h = torch.where(leak.view(-1, 1, 1, 1, 1), d.h_self[idx][:, None], h)  # type: ignore[index]
    if name in ("control", "control_plain"):
        return torch.zeros_like(h), torch.zeros_like(lam)
    if name == "shuffled":
        return h.roll(1, 0), lam
    if name == "leak":
        return d.h_self[idx][:, None], torch.ones_like(lam[:, :1])  # type: ignore[index]
    return h, lam


def train_arms(
    pipe: Any,
    data: ArmData,
    arms: tuple[str, ...],
    steps: int,
    batch_size: int,
    lr_adapter: float,
    lr_decoder: float,
    device: torch.device,
    time_limit_s: float | None = None,
    seed: int = 0,
    log_every: int = 50,
    leak_frac: float = 0.0,
    swap_frac: float = 0.0,
    swap_detach_decoder: bool = False,
    init: dict[str, Any] | None = None,
    decoder_delay: float = 0.0,
    checkpoint: Callable[[int, dict[str, Arm]], None] | None = None,
    checkpoint_every_s: float = 0.0,
    shuffle_frac: float = 0.0,
) -> tuple[dict[str, Arm], dict[str, Any]]:
    """Train ``arms`` on ``data`` from ``pipe``'s student; returns the arms and a summary.
    ``leak_frac``: the ``adapter`` arm's leak curriculum (fraction of rows given the target
    itself); ``swap_frac``: fraction of rows whose encoder reads the swapped caption, for every
    arm but ``PLAIN_ARMS`` (needs ``data.context_swap``); ``swap_detach_decoder``: the swapped
    rows' loss reaches the adapter (through the decoder) but not the decoder's weights, so the
    curriculum cannot teach the decoder to distrust H; ``init``: arm -> a variant file
    (``toyworld.models.variants``) whose
    decoder + adapter weights the arm starts from instead of the student's decoder and an
    identity adapter (to continue an earlier run; the optimiser and schedule start afresh);
    ``decoder_delay``: the fraction of the run (of ``steps``, or of ``time_limit_s`` when that
    ends it first) during which only the adapters learn and every decoder stays the student's,
    so that the adapter learns to use its neighbour while the text path is still wrong where
    the neighbour is right; ``checkpoint(step, arms)``: called every ``checkpoint_every_s``
    seconds of the loop (> 0), so a run cut off mid-way keeps its arms up to the last call;
    ``shuffle_frac``: the ``adapter`` arm's shuffle curriculum (fraction of rows given another
    row's neighbour with their own λ; drawn after the other curricula, so 0 changes no draw)."""
    _check_arms(arms, data, leak_frac, swap_frac)
    torch.manual_seed(seed)
    base = pipe.unet
    base.eval().requires_grad_(False)
    out, params = _build_arms(pipe, arms, device, decoder_delay <= 0, init, lr_adapter, lr_decoder)
    opt = torch.optim.AdamW(params, weight_decay=0.0)
    sched = lambda_lr(opt, min(100, max(1, steps // 10)), steps, "cosine", 0.05, time_limit_s)
    gen = torch.Generator().manual_seed(seed + 13)
    t0 = time.perf_counter()
    step = 0
    delayed = decoder_delay > 0
    delay_step = None
    last_ckpt = t0
    for step in range(1, steps + 1):
        if delayed and _run_fraction(step - 1, steps, t0, time_limit_s) >= decoder_delay:
            delayed, delay_step = False, step
            for p in (p for arm in out.values() for p in decoder_params(arm.unet.unet)):
                p.requires_grad_(True)
        idx = torch.randint(0, len(data), (batch_size,), generator=gen).to(device)
        leak = (torch.rand(batch_size, generator=gen) < leak_frac).to(device) if leak_frac > 0 else None
        swap_cpu = torch.rand(batch_size, generator=gen) < swap_frac if swap_frac > 0 else None
        shuffle = (torch.rand(batch_size, generator=gen) < shuffle_frac).to(device) if shuffle_frac > 0 else None
        losses = _arm_losses(pipe, out, data, idx, device, leak, swap_cpu, shuffle, swap_detach_decoder)
        opt.zero_grad(set_to_none=True)
        sum(losses.values(), torch.zeros((), device=device)).backward()
        for arm in out.values():
            torch.nn.utils.clip_grad_norm_([p for p in arm.unet.parameters() if p.requires_grad], 1.0)
            torch.nn.utils.clip_grad_norm_(list(arm.hadapter.parameters()), 1.0)
        opt.step()
        sched.step()
        for a, arm in out.items():  # the loss tensor is read only on logged steps: no sync a step
            arm.log.add(step, losses[a].detach(), log_every)
        if checkpoint is not None and checkpoint_every_s > 0 and time.perf_counter() - last_ckpt >= checkpoint_every_s:
            checkpoint(step, out)
            last_ckpt = time.perf_counter()
        if out_of_time(t0, time_limit_s):
            break
    summary = _summary(out, step, time.perf_counter() - t0, delay_step, batch_size=batch_size, lr_adapter=lr_adapter,
                       lr_decoder=lr_decoder, leak_frac=leak_frac, swap_frac=swap_frac, shuffle_frac=shuffle_frac,
                       swap_detach_decoder=swap_detach_decoder, decoder_delay=decoder_delay, init=init)
    return out, summary


def _check_arms(arms: tuple[str, ...], data: ArmData, leak_frac: float, swap_frac: float) -> None:
    """Raise on an unknown arm, or on a curriculum whose rows ``data`` does not hold."""
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise ValueError(f"unknown arm(s) {bad}; choose from {ARMS}")
    if swap_frac > 0 and data.context_swap is None:
        raise ValueError(f"swap_frac={swap_frac} needs ArmData.context_swap")
    if ("leak" in arms or leak_frac > 0) and data.h_self is None:
        raise ValueError("the leak arm and leak_frac > 0 need ArmData.h_self (the target's own H)")


def _summary(out: dict[str, Arm], step: int, wall_s: float, delay_step: int | None, *, batch_size: int,
             lr_adapter: float, lr_decoder: float, leak_frac: float, swap_frac: float, shuffle_frac: float,
             swap_detach_decoder: bool, decoder_delay: float, init: dict[str, Any] | None) -> dict[str, Any]:
    """The run's settings and each arm's first and final loss and curve; every arm is left frozen."""
    summary: dict[str, Any] = {"steps": step, "wall_s": round(wall_s, 2),
                               "batch_size": batch_size, "lr_adapter": lr_adapter, "lr_decoder": lr_decoder,
                               "leak_frac": leak_frac, "swap_frac": swap_frac, "shuffle_frac": shuffle_frac,
                               "swap_detach_decoder": swap_detach_decoder and swap_frac > 0, "decoder_delay": decoder_delay,
                               "decoder_from_step": delay_step if decoder_delay > 0 else 1,
                               "init": {a: str(f) for a, f in (init or {}).items()}}
    for a, arm in out.items():
        arm.log.finish(step)
        summary[a] = {"first_loss": arm.log.first(), "final_loss": arm.log.last(), "curve": arm.log.rows}
        arm.unet.eval().requires_grad_(False)
        arm.hadapter.eval().requires_grad_(False)
    return summary


def _build_arms(pipe: Any, arms: tuple[str, ...], device: torch.device, decoder_on: bool,
                init: dict[str, Any] | None, lr_adapter: float,
                lr_decoder: float) -> tuple[dict[str, Arm], list[dict[str, Any]]]:
    """One arm per name: a copy of the student (its decoder trainable when ``decoder_on``) and a
    fresh adapter, or the weights of ``init[name]``; returns the arms and the optimiser's
    parameter groups (each arm's decoder at ``lr_decoder``, its adapter at ``lr_adapter``)."""
    from engines.hadapter import HAdapter

    out: dict[str, Arm] = {}
    params: list[dict[str, Any]] = []
    for a in arms:
        u = copy.deepcopy(pipe.unet).to(device).float()
        u.requires_grad_(False)
        dec = decoder_params(u.unet)
        for p in dec:
            p.requires_grad_(decoder_on)  # a delayed decoder joins later in the loop
        ad = HAdapter(**dict(pipe.hadapter.config)).to(device).float().train()
        if init and a in init:
            load_variant(u.unet, ad, init[a])
        out[a] = Arm(a, u, ad, LossLog(a))
        params += [{"params": dec, "lr": lr_decoder}, {"params": list(ad.parameters()), "lr": lr_adapter}]
    return out, params


def _arm_losses(pipe: Any, out: dict[str, Arm], data: ArmData, idx: torch.Tensor, device: torch.device,
                leak: torch.Tensor | None, swap_cpu: torch.Tensor | None, shuffle: torch.Tensor | None,
                swap_detach_decoder: bool) -> dict[str, torch.Tensor]:
    """Each arm's smooth-L1 loss on rows ``idx``: one frozen-encoder pass per caption kind
    (swapped rows, plain rows) shared by every arm, then each arm's adapter and decoder."""
    from engines.rules import x0_from_output

    base = pipe.unet
    a_t = float(pipe.alphas_cumprod[pipe.student_timestep])
    swap = swap_cpu.to(device) if swap_cpu is not None else None
    eps = data.noise[idx].float()
    z = eps * (1 - a_t) ** 0.5
    ctx = data.context[idx].float()
    tt = torch.full((len(idx),), pipe.student_timestep, device=device, dtype=torch.long)
    kinds = {"plain": ctx}
    if swap is not None and data.context_swap is not None:
        kinds = {"swap": torch.where(swap.view(-1, 1, 1), data.context_swap[idx].float(), ctx),
                 **({"plain": ctx} if set(out) & PLAIN_ARMS else {})}
    enc = {}
    for kind, c in kinds.items():
        with torch.no_grad(), autocast(device):
            h, skips, temb = base.encode(z, tt, c)
        enc[kind] = (h.float(), tuple(s.float() for s in skips), temb.float(), c)
    tgt = data.target[idx].float()
    losses = {}
    for a, arm in out.items():
        h, skips, temb, c = enc["plain" if a in PLAIN_ARMS or "swap" not in enc else "swap"]
        h_r, lam = neighbours_for(a, data, idx, leak, shuffle)
        with autocast(device):
            hh = arm.hadapter(h, h_r.float(), lam.float())
            if swap_detach_decoder and swap_cpu is not None and a not in PLAIN_ARMS and bool(swap_cpu.any()):
                v = _decode_split(arm.unet, hh, skips, temb, c, swap)
            else:
                v = arm.unet.decode(hh, skips, temb, c).float()
        x0 = x0_from_output(z, v, a_t, pipe.prediction_type)
        losses[a] = F.smooth_l1_loss(x0, tgt, beta=0.1)
    return losses


def _run_fraction(done: int, steps: int, t0: float, time_limit_s: float | None) -> float:
    """How far a run of ``steps`` steps (or ``time_limit_s`` seconds, whichever ends first) is."""
    f = done / steps
    if time_limit_s:
        f = max(f, (time.perf_counter() - t0) / time_limit_s)
    return f


class _Decode(torch.nn.Module):
    """``unet.decode`` as a module's forward, for ``torch.func.functional_call``."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.u = unet

    def forward(self, h: torch.Tensor, skips: tuple[torch.Tensor, ...], temb: torch.Tensor,
                ctx: torch.Tensor) -> torch.Tensor:
        return self.u.decode(h, skips, temb, ctx)


def _decode_split(unet: torch.nn.Module, hh: torch.Tensor, skips: tuple[torch.Tensor, ...], temb: torch.Tensor,
                  ctx: torch.Tensor, swap: torch.Tensor) -> torch.Tensor:
    """Decode every row; the rows where ``swap`` is set run on detached decoder weights (their
    gradient reaches ``hh``, not the decoder)."""
    from torch.func import functional_call

    def rows(m: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
        return hh[m], tuple(s[m] for s in skips), temb[m], ctx[m]

    frozen = {f"u.{n}": p.detach() for n, p in unet.named_parameters()}
    v_swap = functional_call(_Decode(unet), frozen, rows(swap)).float()
    out = torch.zeros((hh.shape[0], *v_swap.shape[1:]), device=v_swap.device, dtype=torch.float32)
    out = out.index_put((swap.nonzero(as_tuple=True)[0],), v_swap)
    keep = ~swap
    if bool(keep.any()):
        out = out.index_put((keep.nonzero(as_tuple=True)[0],), unet.decode(*rows(keep)).float())
    return out


@torch.no_grad()
def self_features(pipe: Any, latents: torch.Tensor, context: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """H-features (N,C,h,w) of clean latents (N,4,h,w) with their captions' context, t = 0."""
    dev = pipe.device
    out = []
    for i in range(0, len(latents), batch):
        t = torch.zeros((), device=dev, dtype=torch.long)
        h, _, _ = pipe.unet.encode(latents[i : i + batch].to(dev, pipe.dtype), t, context[i : i + batch].to(dev, pipe.dtype))
        out.append(h.float())
    return torch.cat(out)
