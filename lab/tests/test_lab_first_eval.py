"""``lab.toyworld.first_eval`` on a random tiny model dir: the JSON schema the docs table is built from,
and its one-step images, made through ``retrieval.compose``, equal to those of its old
hand-written path (encode → exact cosine top-1 → λ → ``pipe.generate``) bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory):
    from engines.random_models import write_model_dir
    from lab.toyworld.first_eval import EvalModels

    torch.set_num_threads(2)
    d = tmp_path_factory.mktemp("ev")
    student = write_model_dir(d / "student", "tiny", seed=0)
    adapter = write_model_dir(d / "adapter", "tiny", seed=0, adapter_init_std=0.02)
    teacher = student / "unet"
    return EvalModels(student=student, adapter=adapter, control=student, teacher_unet=teacher)


def test_eval_json_schema(models) -> None:
    from lab.toyworld.first_eval import MODES, evaluate, format_table
    from toyworld.checker import CATEGORIES

    prompts = ["a red circle", "a red triangle left of a blue square"]  # common, long-tail
    res = evaluate(prompts, models, None, seeds_per_prompt=1, device="cpu", n_retrieval=8,
                   teacher_steps=2, batch=4)
    json.dumps(res)
    assert set(res["modes"]) == set(MODES)
    assert res["n_long_tail"] == 1
    for m, r in res["modes"].items():
        assert 0.0 <= r["overall"] <= 1.0, m
        assert r["latency_ms"] > 0
        assert 0.0 <= r["realism"] <= 1.0
        for c in CATEGORIES:
            assert c in r
        assert r["common"]["n"] == 1 and r["long_tail"]["n"] == 1
    assert "neighbour_example" in res["modes"]["adapter"]
    table = format_table(res)
    assert table.count("\n") == len(MODES) + 1 and "| teacher | 2 |" in table


def test_eval_rejects_empty_prompts(models) -> None:
    from lab.toyworld.first_eval import evaluate

    with pytest.raises(ValueError, match="no prompts"):
        evaluate([], models)


def test_cli_eval_writes_json(models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    import lab.toyworld.first_eval as ev

    monkeypatch.setattr(ev.EvalModels, "from_workdir", staticmethod(lambda work: models))
    real = ev.evaluate
    monkeypatch.setattr(ev, "evaluate", lambda p, m, lt, s, d, n: real(p, m, lt, 1, d, 8, 2, 3.0, 4))
    f = tmp_path / "prompts.txt"
    f.write_text("a green square\n")
    ev.main(["--prompts", str(f), "--work", str(tmp_path), "--json", "--device", "cpu"])
    js = json.loads(capsys.readouterr().out)
    assert js["n_prompts"] == 1 and "student" in js["modes"]


@pytest.fixture(scope="module")
def runner(models):  # type: ignore[no-untyped-def]
    from lab.toyworld.first_eval import _Runner

    return _Runner(models, torch.device("cpu"), 16, 2, 3.0)


def _old_path(runner, mode: str, prompts: list[str], seeds: list[int]) -> tuple[np.ndarray, list[str]]:
    """The eval's generation as it was written before it called compose (reference copy)."""
    from engines.rules import neighbour_lambda

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


@pytest.mark.parametrize("mode", ["student", "inject", "adapter", "control"])
def test_eval_images_equal_the_old_path(runner, mode: str) -> None:  # type: ignore[no-untyped-def]
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


def test_retrieval_modes_change_the_image(runner) -> None:  # type: ignore[no-untyped-def]
    """So the equality above covers the retrieval path, not only the plain student."""
    prompts, seeds = ["a red circle", "two blue squares"], [0, 1]
    student, _ = runner.generate("student", prompts, seeds)
    for mode in ("inject", "adapter"):
        assert not np.array_equal(runner.generate(mode, prompts, seeds)[0], student), mode
