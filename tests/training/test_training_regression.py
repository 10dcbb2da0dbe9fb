"""The regression objective (``loss.objective: regression``, ``training.regression``) on tiny
models: the shipped recipe file runs a few steps, its loss falls on a fixed batch, the
export loads through the pipeline, the control keeps its adapter, rows come from a file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "training" / "recipes" / "toy-adapter.yaml"


@pytest.fixture(scope="module")
def paired(tiny_world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 of the tiny images as paired rows: a noise_seed each and exact latents (latents.npy)."""
    from engines.pipeline import OneStepPipeline

    d = tmp_path_factory.mktemp("paired")
    lines = [json.loads(x) for x in (tiny_world["data"] / "captions.jsonl").read_text().splitlines()][:4]
    for i, rec in enumerate(lines):
        shutil.copy(tiny_world["data"] / rec["file"], d / rec["file"])
        rec["noise_seed"] = 100 + i
    (d / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    pipe = OneStepPipeline.from_pretrained(tiny_world["student"])
    shape = (4, pipe.latent_channels, pipe.latent_size, pipe.latent_size)
    np.save(d / "latents.npy", np.random.default_rng(0).normal(0, 0.5, shape).astype(np.float32))
    return d


def _recipe(tiny_world: dict[str, Path], paired: Path, out: Path, **extra: Any) -> Any:
    """The shipped recipe with a tiny override: tiny student, 4 paired rows, the tiny images as
    the retrieval set, a fixed batch (all 4 rows every step) and a high LR without warm-up."""
    from training.config import load_config

    over = {"student": str(tiny_world["student"]), "output_dir": str(out), "device": "cpu", "progress": False,
            "data": {"path": str(paired)}, "retrieval": {"source": "dataset", "path": str(tiny_world["data"])},
            "steps": 6, "batch_size": 4, "log_every": 1, "ckpt_every": 3,
            "optim": {"lr": 1e-2, "decoder_lr": 1e-3, "weight_decay": 0.0, "schedule": "cosine", "lr_floor": 0.05},
            **extra}
    return load_config(RECIPE, over)


def test_the_shipped_recipe_trains_adapter_and_decoder_and_exports_a_loadable_model(
        tiny_world: dict[str, Path], paired: Path, tmp_path: Path) -> None:
    from engines.pipeline import OneStepPipeline
    from training.adapter import train
    from training.export import export_checkpoint
    from training.model import DECODER_PREFIXES

    cfg = _recipe(tiny_world, paired, tmp_path / "run")
    assert cfg.loss.objective == "regression" and cfg.loss.l1_beta == 0.1 and cfg.lora_rank == 0
    res = train(cfg)
    losses = [h["l1"] for h in res.history]
    assert len(losses) == 6 and losses[-1] < 0.9 * losses[0], losses  # the same 4 rows every step
    assert 0 < res.history[0]["lam_mean"] <= 1  # real neighbours from the retrieval set
    assert res.trainable["decoder"] > 0 and res.trainable["hadapter"] > 0

    model = export_checkpoint(res.checkpoint, tmp_path / "model")
    assert json.loads((model / "ragturbo.json").read_text())["trained"]["objective"] == "regression"
    pipe, student = OneStepPipeline.from_pretrained(model), OneStepPipeline.from_pretrained(tiny_world["student"])
    ck = torch.load(res.checkpoint, weights_only=False)
    got, ref = pipe.unet.unet.state_dict(), student.unet.unet.state_dict()
    moved = 0
    for k, v in got.items():
        if k.startswith(DECODER_PREFIXES):
            torch.testing.assert_close(v, ck["decoder"][k])
            moved += not torch.equal(v, ref[k])
        else:
            assert torch.equal(v, ref[k]), k  # the encoder (and so every stored H-feature) is untouched
    assert moved > 0
    assert not torch.equal(pipe.hadapter.proj_out.weight, student.hadapter.proj_out.weight)
    img = pipe.generate(pipe.encode_text(["a red circle"]), [0], "off").images
    assert img.shape == (1, pipe.resolution, pipe.resolution, 3)


def test_resume_continues_exactly(tiny_world: dict[str, Path], paired: Path, tmp_path: Path) -> None:
    from training.adapter import train

    whole = train(_recipe(tiny_world, paired, tmp_path / "whole"))
    train(_recipe(tiny_world, paired, tmp_path / "cut"))
    shutil.copy(tmp_path / "cut" / "step-0000003.pt", tmp_path / "cut" / "latest.pt")  # a run cut off at step 3
    resumed = train(_recipe(tiny_world, paired, tmp_path / "cut"))
    assert resumed.history[0]["step"] == 4
    assert [h["l1"] for h in resumed.history] == [h["l1"] for h in whole.history[3:]]


def test_control_keeps_the_adapter_and_rows_load_from_a_file(tiny_world: dict[str, Path], paired: Path,
                                                             tmp_path: Path) -> None:
    from engines.pipeline import OneStepPipeline
    from training.data import read_pairs
    from training.regression import load_rows, rows_from_pairs, save_rows, train_rows
    from training.retriever import NullRetriever

    pipe = OneStepPipeline.from_pretrained(tiny_world["student"])
    pairs = read_pairs(paired)
    rows = rows_from_pairs(pipe, pairs, NullRetriever(pipe.h_shape), 1)
    rows.h_nb.normal_()  # a neighbour the control must not see
    rows.lam.fill_(0.8)
    f = {"noise_seed": torch.tensor([p.noise_seed for p in pairs]), "caption": [p.caption for p in pairs],
         "target": rows.target, "h_nb": rows.h_nb, "lam": rows.lam}
    torch.save(f, tmp_path / "rows.pt")
    back = load_rows(tmp_path / "rows.pt", pipe)
    torch.testing.assert_close(back.noise, pipe.initial_noise([p.noise_seed for p in pairs]).float())
    torch.testing.assert_close(back.context, pipe.encode_text([p.caption for p in pairs]).context.float())
    save_rows(back, tmp_path / "rows2.pt")

    calls: list[int] = []
    w0 = pipe.hadapter.proj_out.weight.detach().clone()
    ctl, summ = train_rows(OneStepPipeline.from_pretrained(tiny_world["student"]), tmp_path / "rows2.pt", True, 3, 4,
                           1e-2, 1e-3, "cpu", checkpoint=lambda s, p: calls.append(s), checkpoint_every_s=1e-9)
    assert calls == [1, 2, 3] and summ["steps"] == 3 and summ["control"]
    assert torch.equal(ctl.hadapter.proj_out.weight, w0)  # λ = 0: the adapter gets no signal
    adp, _ = train_rows(tiny_world["student"], back, False, 3, 4, 1e-2, 1e-3, "cpu")
    assert not torch.equal(adp.hadapter.proj_out.weight, w0)
    with pytest.raises(ValueError, match="lacks"):
        torch.save({"target": rows.target}, tmp_path / "bad.pt")
        load_rows(tmp_path / "bad.pt", pipe)


def test_regression_refuses_unpaired_rows_and_rows_files_need_the_objective(
        tiny_world: dict[str, Path], paired: Path, tmp_path: Path) -> None:
    from training.adapter import train
    from training.config import config_from_dict

    cfg = _recipe(tiny_world, paired, tmp_path / "r", data={"path": str(tiny_world["data"])})
    with pytest.raises(ValueError, match="8 of 8 have none"):
        train(cfg)
    with pytest.raises(ValueError, match="data.rows needs loss.objective"):
        config_from_dict({"student": "s", "teacher_unet": "t", "data": {"path": "p", "rows": "r.pt"}})
    ok = config_from_dict({"student": "s", "data": {"rows": "r.pt"}, "loss": {"objective": "regression"}})
    assert ok.teacher_unet == ""  # regression needs no teacher UNet
