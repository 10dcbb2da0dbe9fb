"""The model-family recipe at micro size on CPU: every stage trains (its loss falls), the
exported directory loads through OneStepPipeline, and the data splits are deterministic."""

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
    from toyworld.recipes import run_recipe

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
    from toyworld.recipes import run_recipe

    work, res = recipe
    again = run_recipe(work, micro(), ("vae", "text"), device="cpu")
    assert again["vae"]["wall_s"] == res["vae"]["wall_s"]  # read back from done.json, not retrained


def test_splits_are_deterministic_and_long_tail_is_rare_in_training() -> None:
    from toyworld.models.data import eval_prompts, make_split

    a, b = make_split("train", 6, workers=1), make_split("train", 6, workers=1)
    assert a.captions == b.captions and np.array_equal(a.images, b.images)
    tail_of_a = make_split("train", 2, workers=1, start=4)  # items 4..5: a continued run's new rows
    assert tail_of_a.captions == a.captions[4:] and np.array_equal(tail_of_a.images, a.images[4:])
    with pytest.raises(ValueError, match="start"):
        make_split("train", 2, start=-1)
    bare = make_split("train", 6, workers=1, images=False)  # the arm stage's rows: no renders
    assert bare.images is None and bare.captions == a.captions and bare.specs == a.specs
    tr, rt = make_split("train", 300, workers=1), make_split("retrieval", 300, workers=1)
    assert tr.long_tail.mean() < 0.05 < rt.long_tail.mean()
    p, tail = eval_prompts(3, 3)
    assert len(p) == 6 and tail == [False] * 3 + [True] * 3
    assert not set(p) & set(tr.captions)


def test_unknown_family_and_stage_are_rejected(tmp_path: Path) -> None:
    from toyworld.recipes import run_recipe

    with pytest.raises(ValueError, match="unknown family"):
        get_family("huge")
    with pytest.raises(ValueError, match="unknown stage"):
        run_recipe(tmp_path, micro(), ("vae", "nope"), device="cpu")
