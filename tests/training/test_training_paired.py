"""Paired targets: teacher samples record their noise seed, and the job feeds the student
exactly that noise; unpaired rows are not regressed unless the config asks for it."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from training.data import batch_indices, read_pairs


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def teacher_pq(tiny_world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 teacher samples (seed 40 -> noise seeds 40..43) as parquet, via the CLI."""
    from typer.testing import CliRunner

    from ragturbo.cli import _register_all, app

    tmp = tmp_path_factory.mktemp("paired")
    prompts = tmp / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\na yellow circle\n")
    _register_all()
    r = CliRunner().invoke(app, [
        "train", "teacher-samples", "--student", str(tiny_world["student"]),
        "--teacher-unet", str(tiny_world["teacher"]), "--prompts", str(prompts), "--steps", "2",
        "--batch-size", "3", "--seed", "40", "--format", "parquet", "--out", str(tmp / "pq")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, [
        "train", "teacher-samples", "--student", str(tiny_world["student"]),
        "--teacher-unet", str(tiny_world["teacher"]), "--prompts", str(prompts), "--steps", "2",
        "--seed", "40", "--limit", "2", "--out", str(tmp / "folder")])
    assert r.exit_code == 0, r.output
    return tmp / "pq" / "data.parquet"


def test_teacher_samples_record_the_noise_they_started_from(
    tiny_world: dict[str, Path], teacher_pq: Path
) -> None:
    from training.teacher_samples import sample_teacher

    pairs = read_pairs(teacher_pq)
    assert [p.noise_seed for p in pairs] == [40, 41, 42, 43]
    folder = [json.loads(x) for x in (teacher_pq.parent.parent / "folder" / "captions.jsonl").read_text().splitlines()]
    assert [x["noise_seed"] for x in folder] == [40, 41]
    assert [p.noise_seed for p in read_pairs(teacher_pq.parent.parent / "folder")] == [40, 41]
    # sample 2 of the batch (seed 42) is the sample of that prompt alone with seed 42:
    # the noise depends on the recorded seed only, not on the batch it was drawn in
    _, alone = sample_teacher(tiny_world["student"], tiny_world["teacher"], [pairs[2].caption],
                              steps=2, seed=42)
    assert torch.allclose(alone[0].flatten(), torch.from_numpy(pairs[2].latent), atol=1e-3)


def test_paired_rows_get_exactly_the_recorded_noise(
    make_config: Any, tiny_world: dict[str, Path], teacher_pq: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engines.pipeline import OneStepPipeline
    from training import model
    from training.adapter import train

    # a mixed dataset: rows 0 and 2 paired (seeds 40, 42), rows 1 and 3 unpaired
    t = pq.read_table(teacher_pq)
    seeds = [40, None, 42, None]
    t = t.set_column(t.column_names.index("noise_seed"), "noise_seed", pa.array(seeds, pa.int64()))
    mixed = tmp_path / "mixed.parquet"
    pq.write_table(t, mixed)

    seen: list[torch.Tensor] = []
    orig = model.StudentForward.forward

    def spy(self: Any, noise: torch.Tensor, *a: Any) -> torch.Tensor:
        seen.append(noise.detach().clone())
        return orig(self, noise, *a)

    monkeypatch.setattr(model.StudentForward, "forward", spy)
    cfg = make_config(tmp_path / "run", steps=2)
    cfg.update(data={"path": str(mixed)}, batch_size=4, loss={"disc_head_channels": 16})
    res = train(copy.deepcopy(cfg))
    pipe = OneStepPipeline.from_pretrained(tiny_world["student"])
    assert len(seen) == 2
    for step, noise in enumerate(seen):
        for j, i in enumerate(batch_indices(4, 4, step, cfg.get("seed", 0))):
            if seeds[i] is None:
                assert not torch.equal(noise[j], pipe.initial_noise([40])[0])
            else:
                assert torch.equal(noise[j], pipe.initial_noise([seeds[i]])[0]), (step, j, i)
    rows = _rows(res.log_csv)
    assert float(rows[-1]["paired"]) == 0.5
    assert float(rows[-1]["l1"]) > 0 and float(rows[-1]["lpips"]) > 0  # paired rows regressed


def test_unpaired_rows_are_not_regressed_unless_asked(make_config: Any, tmp_path: Path) -> None:
    from training.adapter import train
    from training.config import config_from_dict

    cfg = make_config(tmp_path / "off", steps=1)
    cfg["loss"] = {"disc_head_channels": 16}  # default: unpaired_regression off
    assert config_from_dict(copy.deepcopy(cfg)).loss.unpaired_regression is False
    off = _rows(train(copy.deepcopy(cfg)).log_csv)[-1]
    assert float(off["paired"]) == 0.0
    assert float(off["l1"]) == 0.0 and float(off["lpips"]) == 0.0
    assert float(off["loss_g"]) == pytest.approx(float(off["adv_g"]), rel=1e-6)  # adversarial only

    cfg = make_config(tmp_path / "on", steps=1)
    cfg["loss"] = {"disc_head_channels": 16, "unpaired_regression": True}
    on = _rows(train(cfg).log_csv)[-1]
    assert float(on["l1"]) > 0 and float(on["lpips"]) > 0
    assert float(on["loss_g"]) > float(on["adv_g"])


def test_bad_noise_seed_names_the_row(tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "a.png", "caption": "x", "noise_seed": "7"}) + "\n")
    with pytest.raises(ValueError, match=r"captions.jsonl:1: noise_seed"):
        read_pairs(tmp_path)
