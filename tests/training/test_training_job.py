"""The adapter training job on tiny CPU models: it runs, both players learn, resume is exact."""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from training.adapter import TrainResult, train
from training.checkpoint import load_checkpoint


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def full_run(make_config: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], TrainResult]:
    """4 uninterrupted steps with an EMA, checkpoints at 2 and 4 (the reference for resume)."""
    cfg = make_config(tmp_path_factory.mktemp("full") / "run", steps=4)
    cfg["ema_decay"] = 0.7
    return cfg, train(copy.deepcopy(cfg))


def test_losses_finite_and_both_players_update(full_run: tuple[dict[str, Any], TrainResult]) -> None:
    cfg, res = full_run
    rows = _rows(res.log_csv)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    for r in rows:
        for key in ("loss_g", "loss_d", "adv_g", "l1", "lpips"):
            assert math.isfinite(float(r[key])), (key, r)
    assert float(rows[-1]["lam_mean"]) > 0  # retrieval fed real neighbours
    out = Path(cfg["output_dir"])
    mid, end = load_checkpoint(out / "step-0000002.pt"), load_checkpoint(out / "step-0000004.pt")
    # discriminator heads moved between step 2 and 4
    assert any(not torch.equal(mid["heads"][k], end["heads"][k]) for k in end["heads"])
    # generator: the LoRA's B matrices start at zero and the adapter's output projection too
    lora_b = [v for k, v in end["lora"].items() if "lora_B" in k]
    assert lora_b and any(v.abs().max() > 0 for v in lora_b)
    assert end["hadapter"]["proj_out.weight"].abs().max() > 0
    assert res.trainable["hadapter"] > 0 and res.trainable["lora"] > 0


def test_trained_adapter_output_moves_from_zero(full_run: tuple[dict[str, Any], TrainResult]) -> None:
    from engines.hadapter import HAdapter

    _, res = full_run
    ck = load_checkpoint(res.checkpoint)
    cfg = {k: v for k, v in ck["hadapter_config"].items() if not k.startswith("_")}
    ad = HAdapter(**cfg)
    ad.load_state_dict(ck["hadapter"])
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, cfg["channels"], 4, 4, generator=g)
    hr = torch.randn(2, 1, cfg["channels"], 4, 4, generator=g)
    delta = ad(h, hr, torch.ones(2, 1)) - h
    assert delta.abs().max() > 1e-4
    assert torch.equal(ad(h, hr, torch.zeros(2, 1)), h)  # λ = 0 still means "no neighbour"


def test_resume_is_exact(make_config: Any, tmp_path: Path,
                         full_run: tuple[dict[str, Any], TrainResult]) -> None:
    _, ref = full_run
    cfg = make_config(tmp_path / "run", steps=2)
    cfg["ema_decay"] = 0.7
    train(copy.deepcopy(cfg))  # "interrupted" after step 2
    cfg["steps"] = 4
    res = train(copy.deepcopy(cfg))  # resumes from latest.pt
    assert _losses(res) == _losses(ref)  # the same losses, digit for digit, at steps 1-4
    a, b = load_checkpoint(res.checkpoint), load_checkpoint(ref.checkpoint)
    for part in ("hadapter", "lora", "heads", "ema"):
        for k in b[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert not torch.equal(b["ema"]["hadapter.proj_out.weight"], b["hadapter"]["proj_out.weight"])


def _losses(res: TrainResult) -> list[tuple[str, ...]]:
    keys = ("step", "loss_g", "loss_d", "adv_g", "l1", "lpips", "d_real", "d_fake")
    return [tuple(r[k] for k in keys) for r in _rows(res.log_csv)]


def test_control_run_uses_null_neighbours(make_config: Any, tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "ctl", steps=2)
    cfg["retrieval"] = None  # == control: true
    res = train(cfg)
    assert res.control
    rows = _rows(res.log_csv)
    assert all(float(r["lam_mean"]) == 0.0 for r in rows)
    ck = load_checkpoint(res.checkpoint)
    # λ = 0: the adapter gets no signal and stays the identity; the LoRA still trains
    assert ck["hadapter"]["proj_out.weight"].abs().max() == 0
    assert any(v.abs().max() > 0 for k, v in ck["lora"].items() if "lora_B" in k)


def test_retrieval_never_returns_the_pair_itself() -> None:
    from training.retriever_db import DbRetriever

    emb = torch.eye(3)
    feats = torch.arange(3.0)[:, None, None, None].expand(3, 2, 1, 1).clone()
    r = DbRetriever.in_memory(["a", "b", "c"], emb, feats, min_score=0.0)
    h, lam = r(emb[:1], 2, [frozenset({"a"})])
    assert lam.shape == (1, 2) and torch.all(lam == 0)  # only orthogonal pairs left: score 0
    h, lam = r(torch.tensor([[1.0, 0.5, 0.0]]), 1, [frozenset({"a"})])
    assert lam[0, 0] > 0 and h[0, 0, 0, 0, 0] == 1.0  # "b", never "a"
    h, lam = r(torch.tensor([[1.0, 0.5, 0.0]]), 5, [frozenset()])
    assert h.shape == (1, 5, 2, 1, 1) and torch.all(lam[0, 3:] == 0)  # padded with null neighbours


def test_bad_config_names_the_offending_values(tmp_path: Path) -> None:
    from training.config import config_from_dict, load_config

    with pytest.raises(ValueError, match="unknown config key"):
        config_from_dict({"student": "s", "teacher_unet": "t", "data": {"path": "d"}, "stepz": 3})
    with pytest.raises(ValueError, match=r"retrieval.k: Input should be less than or equal to 8 \(got 9\)"):
        config_from_dict({"student": "s", "teacher_unet": "t", "data": {"path": "d"}, "retrieval": {"k": 9}})
    # every bad value at once, each with its key and the value given (pydantic bounds)
    with pytest.raises(ValueError) as err:
        config_from_dict({"student": "s", "teacher_unet": "t", "data": {"path": "d"},
                          "steps": 0, "ema_decay": 1.5, "mixed_precision": "fp8"})
    for part in ("steps: Input should be greater than or equal to 1 (got 0)",
                 "ema_decay: Input should be less than 1 (got 1.5)", "mixed_precision:", "'fp8'"):
        assert part in str(err.value)
    with pytest.raises(ValueError, match=r"optim.lr: Input should be greater than 0 \(got 0\)"):
        config_from_dict({"student": "s", "teacher_unet": "t", "data": {"path": "d"}, "optim": {"lr": 0}})
    toml = tmp_path / "c.toml"
    toml.write_text('student = "s"\nteacher_unet = "t"\ncontrol = true\n[data]\npath = "d"\n[loss]\nl1_weight = 3.0\n')
    cfg = load_config(toml)
    assert cfg.is_control and cfg.loss.l1_weight == 3.0 and cfg.data.path == str(tmp_path / "d")


def test_gradient_checkpointing_gives_the_same_step(make_config: Any, tmp_path: Path,
                                                   full_run: tuple[dict[str, Any], TrainResult]) -> None:
    _, ref = full_run
    cfg = make_config(tmp_path / "gc", steps=1)
    cfg["gradient_checkpointing"] = True
    res = train(cfg)
    got, want = _rows(res.log_csv)[0], _rows(ref.log_csv)[0]
    for key in ("loss_g", "loss_d", "l1", "lpips"):
        assert float(got[key]) == pytest.approx(float(want[key]), rel=1e-5), key
