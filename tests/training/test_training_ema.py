"""The one EMA (torch's AveragedModel + get_ema_multi_avg_fn) in both places that keep one:
the training job's ``ParamEMA`` over the trained parameters only, and the toy-world
stages' ``EMA`` over a whole module. Both must follow ema_0 = w_0, ema_t = d·ema_{t-1} + (1-d)·w_t."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from training.ema import ParamEMA


def _reference(ws: list[torch.Tensor], decay: float) -> torch.Tensor:
    ema = ws[0].clone()
    for w in ws[1:]:
        ema = decay * ema + (1 - decay) * w
    return ema


def _train(model: nn.Module, n: int, update: Callable[[], None]) -> list[dict[str, torch.Tensor]]:
    """n deterministic 'optimiser steps' on the trainable parameters, ``update`` after each;
    returns the weights before the first step and after each."""
    g = torch.Generator().manual_seed(0)
    seen = [{k: v.detach().clone() for k, v in model.named_parameters()}]
    for _ in range(n):
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=g))
        update()
        seen.append({k: v.detach().clone() for k, v in model.named_parameters()})
    return seen


def test_param_ema_follows_the_recurrence_over_the_trained_parameters_only() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    model[0].requires_grad_(False)  # frozen: not averaged, not copied
    ema = ParamEMA([(n, p) for n, p in model.named_parameters() if p.requires_grad], 0.9)
    seen = _train(model, 5, ema.update)
    state = ema.state_dict()
    assert sorted(state) == ["1.bias", "1.weight"]
    for k, v in state.items():
        torch.testing.assert_close(v, _reference([s[k] for s in seen], 0.9), rtol=1e-6, atol=1e-6)
        assert not torch.equal(v, dict(model.named_parameters())[k])  # the average, not the live weight


def test_param_ema_state_round_trip_and_name_check() -> None:
    model = nn.Linear(3, 2)
    ema = ParamEMA(list(model.named_parameters()), 0.99)
    _train(model, 2, ema.update)
    saved = ema.state_dict()
    other = ParamEMA(list(nn.Linear(3, 2).named_parameters()), 0.99)
    other.load_state_dict(saved)
    for k in saved:
        assert torch.equal(other.state_dict()[k], saved[k])
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({"weight": saved["weight"]})
    with pytest.raises(ValueError, match="decay"):
        ParamEMA(list(model.named_parameters()), 1.0)


def test_copy_to_makes_the_model_the_average_as_the_toyworld_stages_use_it() -> None:
    """The teacher and student stages train a whole module and return it holding the EMA."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.GroupNorm(1, 3))
    ema = ParamEMA(list(model.named_parameters()), 0.8)
    seen = _train(model, 4, ema.update)
    ema.copy_to()
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), _reference([s[k] for s in seen], 0.8), rtol=1e-6, atol=1e-6)
    assert ema.state_dict().keys() == dict(model.named_parameters()).keys()
