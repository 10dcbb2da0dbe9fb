"""``toyworld.eval`` generates through ``retrieval.compose`` and gets the images of its old
hand-written path (encode → exact cosine top-1 → λ → ``pipe.generate``), bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory):
    from engines.random_models import write_model_dir
    from toyworld.eval import EvalModels, _Runner

    torch.set_num_threads(2)
    d = tmp_path_factory.mktemp("evc")
    student = write_model_dir(d / "student", "tiny", seed=0)
    adapter = write_model_dir(d / "adapter", "tiny", seed=1, adapter_init_std=0.05)
    models = EvalModels(student=student, adapter=adapter, control=None, teacher_unet=None)
    return _Runner(models, torch.device("cpu"), 16, 2, 3.0)


def _old_path(runner, mode: str, prompts: list[str], seeds: list[int]) -> tuple[np.ndarray, list[str]]:
    """The eval's generation as it was written before it called compose (reference copy)."""
    from engines.stages import neighbour_lambda

    key = mode if mode in ("adapter", "control") else "student"
    pipe = runner.pipes[key]
    text = pipe.encode_text(prompts)
    if mode == "student":
        return pipe.generate(text, seeds, "off").images, [""] * len(prompts)
    split = runner.splits[key]
    q = torch.nn.functional.normalize(text.pooled.float().to(split.pooled.device), dim=-1)
    s, i = (q @ split.pooled.T).topk(1, dim=1)
    h, lam = split.features[i], neighbour_lambda(s, 0.0)
    out = pipe.generate(text, seeds, "inject" if mode == "inject" else "adapter", h, lam)
    return out.images, [split.captions[int(j)] for j in i[:, 0]]


@pytest.mark.parametrize("mode", ["student", "inject", "adapter"])
def test_eval_images_equal_the_old_path(runner, mode: str) -> None:
    prompts = ["a red circle", "two blue squares", "a small green triangle above a yellow star"]
    seeds = [0, 1001, 7]
    with torch.no_grad():
        old_im, old_nb = _old_path(runner, mode, prompts, seeds)
    new_im, new_nb = runner.generate(mode, prompts, seeds)
    assert new_im.dtype == np.uint8 and new_im.shape == old_im.shape
    assert np.array_equal(new_im, old_im), f"{mode}: {np.abs(new_im.astype(int) - old_im).max()}"
    assert new_nb == old_nb
    if mode != "student":
        assert all(new_nb), "every prompt has a neighbour"
