"""EMA of the trained generator weights, kept by torch's ``AveragedModel``.

``ParamEMA`` averages only the parameters it is given (the adapter and the LoRA, not the
frozen UNet they live in): they are gathered in an ``nn.ParameterList`` that holds the
live tensors, and ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``
keeps a copy of that list and updates it with one ``_foreach_lerp_`` per step:
``ema ← ema + (1 − decay)·(p − ema)``. The EMA starts at the weights it was built from.

The one EMA of the repository: the training job's generator and the toy-world stages
(teacher, student) use it; ``copy_to`` writes the average into the live weights at the end.

The checkpoint format is a name → tensor dict (``state_dict`` / ``load_state_dict``), the
names of ``StudentForward.trainable()``, which ``training.export`` reads.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class ParamEMA:
    """Exponential moving average of the named parameters ``named`` (e.g. ``gen.trainable()``)."""

    def __init__(self, named: list[tuple[str, nn.Parameter]], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if not named:
            raise ValueError("EMA over no parameters")
        self.names = [n for n, _ in named]
        self.decay = decay
        self._live = nn.ParameterList([p for _, p in named])  # the live tensors, not copies
        self._avg = AveragedModel(self._live, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
        self._avg.requires_grad_(False)
        # AveragedModel's first update copies the weights; count it now so that every
        # update() after a training step is an EMA step.
        self._avg.update_parameters(self._live)

    def update(self) -> None:
        """One EMA step towards the current weights (call after each optimiser step)."""
        self._avg.update_parameters(self._live)

    def copy_to(self) -> None:
        """Write the EMA into the live parameters (the model then *is* the average)."""
        with torch.no_grad():
            for p, e in zip(self._live, self._avg.module, strict=True):
                p.copy_(e)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """name → EMA tensor (CPU copies), the checkpoint's ``ema`` entry."""
        return {n: p.detach().cpu().clone() for n, p in zip(self.names, self._avg.module, strict=True)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a checkpoint's ``ema`` entry; names must match the trained parameters."""
        missing = [n for n in self.names if n not in state]
        extra = [n for n in state if n not in set(self.names)]
        if missing or extra:
            raise ValueError(f"EMA state does not match the trained parameters: missing {missing[:3]}, "
                             f"unexpected {extra[:3]}")
        with torch.no_grad():
            for n, p in zip(self.names, self._avg.module, strict=True):
                p.copy_(state[n].to(p.device, p.dtype))
