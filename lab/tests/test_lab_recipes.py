"""The first family's recipe (``lab.toyworld.recipes``) at micro size on CPU: every stage trains
(its loss falls), the exported directory loads through OneStepPipeline, a run resumes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from toyworld.models.configs import StageRun, get_family


def micro():
    cfg = get_family("tiny")
    return replace(
        cfg,
        n_train=24,
        n_distill=8,
        teacher_steps=2,
        vae=StageRun(steps=12, batch_size=8, lr=3e-3, log_every=1),
        text=StageRun(steps=12, batch_size=12, lr=3e-3, log_every=1),
        teacher=StageRun(steps=12, batch_size=8, lr=2e-3, log_every=1),
        student=StageRun(steps=12, batch_size=8, lr=2e-3, log_every=1),
    )


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from lab.toyworld.recipes import run_recipe

    torch.set_num_threads(2)
    work = tmp_path_factory.mktemp("tw")
    res = run_recipe(work, micro(), ("vae", "text", "teacher", "student", "export"), device="cpu")
    return work, res


@pytest.mark.parametrize("stage", ["vae", "text", "teacher", "student"])
def test_stage_loss_decreases(recipe: tuple[Path, dict], stage: str) -> None:
    _, res = recipe
    s = res[stage]
    assert s["steps"] == 12
    assert s["final_loss"] < s["first_loss"], s


def test_recipe_writes_loadable_model_dir(recipe: tuple[Path, dict]) -> None:
    from engines.pipeline import OneStepPipeline

    work, res = recipe
    pipe = OneStepPipeline.from_pretrained(work / "model")
    assert pipe.prediction_type == "v_prediction"
    assert pipe.resolution == 64 and pipe.latent_size == 16
    assert float(pipe.vae.config.scaling_factor) == pytest.approx(res["vae"]["scaling_factor"])
    out = pipe(["a red circle", "two blue squares"], [0, 1], "off")
    assert out.images.shape == (2, 64, 64, 3) and out.images.dtype == np.uint8
    assert not np.array_equal(out.images[0], out.images[1])


def test_recipe_resumes_without_retraining(recipe: tuple[Path, dict]) -> None:
    from lab.toyworld.recipes import run_recipe

    work, res = recipe
    again = run_recipe(work, micro(), ("vae", "text"), device="cpu")
    assert again["vae"]["wall_s"] == res["vae"]["wall_s"]  # read back from done.json, not retrained


def test_unknown_stage_is_rejected(tmp_path: Path) -> None:
    from lab.toyworld.recipes import run_recipe

    with pytest.raises(ValueError, match="unknown stage"):
        run_recipe(tmp_path, micro(), ("vae", "nope"), device="cpu")
