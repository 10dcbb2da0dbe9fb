"""The lab's toy-world drivers at micro size on CPU: the swap probe, arm variants and shipping
them, seeding a run from an earlier one, the GPU sweep scripts and the fidelity CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from toyworld.models.configs import get_family


def test_probe_swap_text_is_a_no_op_only_without_decoder_cross_attention(dirs: dict[str, Path]) -> None:
    from lab.toyworld.probe import PROBE_MODES, probe
    from toyworld.models.data import eval_prompts

    prompts, _ = eval_prompts(3, 3)
    res = {k: probe(d, prompts, 1, device="cpu", workers=1) for k, d in dirs.items()}
    for r in res.values():
        assert set(PROBE_MODES) <= set(r["modes"])
        assert r["renders"]["own_vs_own"] > 0.95  # the oracle renders answer their prompts
    mid = res["mid"]["modes"]
    assert mid["swap_text"] == mid["own"]  # the decoder never reads the caption
    assert res["mid"]["layout"]["up"] == ["UpBlock2D"] * 3


def test_arm_variants_restore_to_model_dirs_and_pack_under_the_size_cap(
        dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import tarfile

    from engines.pipeline import OneStepPipeline
    from lab.toyworld import fidelity

    work = tmp_path / "w"
    shutil.copytree(dirs["mid"], work / "model")
    a = OneStepPipeline.from_pretrained(dirs["mid"])
    for i, arm in enumerate(("adapter", "control")):
        with torch.no_grad():
            a.hadapter.proj_out.weight.fill_(0.001 * (i + 1))
        fidelity.save_arm_variant(a.unet.unet, a.hadapter, work / "variants" / f"{arm}.safetensors")
    assert fidelity.restore_arms(work) == ["adapter", "control"]
    assert fidelity.restore_arms(work) == []  # idempotent
    b = OneStepPipeline.from_pretrained(work / "control_model")
    assert torch.allclose(b.hadapter.proj_out.weight, torch.full_like(b.hadapter.proj_out.weight, 0.002), atol=1e-5)
    assert json.loads((work / "control_model" / "ragturbo.json").read_text())["variant"] == "control"
    one = (work / "variants" / "adapter.safetensors").stat().st_size
    monkeypatch.setattr(fidelity, "_TAR_MAX", one + 1)  # room for one file a tar
    fidelity.packer(tmp_path / "out")("arms", work)
    tars = sorted(p.name for p in (tmp_path / "out").glob("variants_*.tar"))
    assert tars == ["variants_0.tar", "variants_1.tar"]
    with tarfile.open(tmp_path / "out" / "variants_1.tar") as t:
        assert t.getnames() == ["variants/control.safetensors"]


def test_ship_writes_the_winner_and_the_eval_variants_and_keeps_a_matching_small_decoder(
        dirs: dict[str, Path], tmp_path: Path) -> None:
    """``ship`` makes the chosen arm the model dir (its ragturbo.json names it), writes the other
    variants for the eval, and keeps the old ``vae_small`` only when it was distilled from the
    new model's VAE (the arms never change the VAE)."""
    import shutil

    from engines.modeldir import file_sha256
    from engines.pipeline import OneStepPipeline
    from lab.toyworld import fidelity
    from lab.toyworld.ship import ship

    work = tmp_path / "w"
    shutil.copytree(dirs["mid"], work / "model")
    a = OneStepPipeline.from_pretrained(dirs["mid"])
    for arm in ("adapter", "control"):
        fidelity.save_arm_variant(a.unet.unet, a.hadapter, work / "variants" / f"{arm}.safetensors")
    vae_sha = file_sha256(work / "model" / "vae" / "diffusion_pytorch_model.safetensors")
    for sha, kept in ((vae_sha, True), ("0" * 64, False)):
        dest, ev = tmp_path / f"model-{kept}", tmp_path / f"eval-{kept}"
        (dest / "vae_small").mkdir(parents=True)
        (dest / "vae_small" / "config.json").write_text(json.dumps({"distilled_from_vae_sha256": sha}))
        out = ship(work, "adapter", model_dest=dest, eval_dest=ev)
        assert out["eval"] == ["student", "control"]
        assert json.loads((dest / "ragturbo.json").read_text())["variant"] == "adapter"
        assert sorted(p.name for p in ev.iterdir()) == ["control.safetensors", "student.safetensors"]
        assert (dest / "vae_small" / "config.json").is_file() is kept


def test_shipped_variants_give_every_arm_what_ships_and_refuse_an_arm_with_nothing(
        dirs: dict[str, Path], tmp_path: Path) -> None:
    """``shipped_variants`` (the eighth run's ``--arm-init``): adapter and real from the
    shipped model's own decoder + adapter, the others from the eval dir (control_plain, which
    has no file, from the plain control's), a file per arm that loads back to the same
    weights; an arm with no shipped weights is an error."""
    import shutil

    from engines.pipeline import OneStepPipeline
    from lab.toyworld import fidelity
    from lab.toyworld.ship import ship, shipped_variants
    from toyworld.fideval import apply_variant

    work = tmp_path / "w"
    shutil.copytree(dirs["mid"], work / "model")
    a = OneStepPipeline.from_pretrained(dirs["mid"])
    with torch.no_grad():
        a.hadapter.proj_out.weight.fill_(0.002)
    for arm in ("adapter", "control"):
        fidelity.save_arm_variant(a.unet.unet, a.hadapter, work / "variants" / f"{arm}.safetensors")
        with torch.no_grad():
            a.hadapter.proj_out.weight.fill_(0.0)
    dest, ev = tmp_path / "model", tmp_path / "eval"
    ship(work, "adapter", model_dest=dest, eval_dest=ev)
    src = shipped_variants(tmp_path / "init", ("adapter", "real", "control", "control_plain"), model=dest, eval_dir=ev)
    assert src == {"adapter": str(dest), "real": str(dest), "control": str(ev / "control.safetensors"),
                   "control_plain": str(ev / "control.safetensors")}
    for arm, w in (("adapter", 0.002), ("real", 0.002), ("control", 0.0), ("control_plain", 0.0)):
        b = OneStepPipeline.from_pretrained(dirs["mid"])
        apply_variant(b, tmp_path / "init" / f"{arm}.safetensors")
        assert torch.allclose(b.hadapter.proj_out.weight, torch.full_like(b.hadapter.proj_out.weight, w), atol=1e-5), arm
    with pytest.raises(FileNotFoundError, match="shuffled"):
        shipped_variants(tmp_path / "init2", ("shuffled",), model=dest, eval_dir=ev)


def test_seed_student_takes_an_earlier_runs_student(dirs: dict[str, Path], tmp_path: Path) -> None:
    from lab.toyworld import fidelity

    cfg = get_family("tiny-mid")
    w = tmp_path / "w"
    fidelity.seed_from_shipped(cfg, w, dirs["mid"] / "unet", dirs["mid"], student_unet=dirs["xattn"] / "unet")
    assert (w / "student" / "unet" / "config.json").read_text() == (dirs["xattn"] / "unet" / "config.json").read_text()
    assert [s for s in fidelity.STAGES if (w / s / "done.json").is_file()] == ["base", "teacher", "skewed", "student"]
    with pytest.raises(FileNotFoundError, match="student UNet"):
        fidelity.seed_from_shipped(cfg, tmp_path / "w2", dirs["mid"] / "unet", dirs["mid"], student_unet=tmp_path / "none")


def test_seed_teacher_marks_base_and_teacher_only(dirs: dict[str, Path], tmp_path: Path) -> None:
    """``--seed-teacher``: the given teacher UNet becomes the teacher stage; skewed and student
    are left to train."""
    from lab.toyworld import fidelity

    cfg = get_family("tiny-mid")
    with pytest.raises(FileNotFoundError, match="config.json"):
        fidelity.seed_teacher(cfg, tmp_path / "bad", tmp_path / "nowhere", dirs["mid"])
    w = tmp_path / "w"
    fidelity.seed_teacher(cfg, w, dirs["mid"] / "unet", dirs["mid"])
    assert (w / "teacher" / "unet" / "config.json").is_file() and (w / "vae").is_dir()
    assert [s for s in fidelity.STAGES if (w / s / "done.json").is_file()] == ["base", "teacher"]


def test_gpu_arms_sweep_trains_once_then_forks_one_process_per_recipe(tmp_path: Path) -> None:
    """``lab/toyworld/gpu_arms_sweep.sh`` with a stand-in for ``python``: one shared run (teacher
    seeded, stages up to export), then one run per recipe in its own copy of the work dir,
    with the shared and the recipe's overrides."""
    import subprocess
    import sys

    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fake.py"
    fake.write_text(
        "import json, pathlib, sys\n"
        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[3:]) + '\\n')\n"
        "w = pathlib.Path(sys.argv[3]); w.mkdir(parents=True, exist_ok=True)\n"
        "if '--seed-teacher' in sys.argv: (w / 'mark').write_text('shared')\n")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PY": f"{sys.executable} {fake}", "OUT": str(tmp_path / "out"),
           "WORK": str(tmp_path / "w"), "SET": "n_train=8", "ARMS": "adapter,control",
           "RECIPES": "a:swap_frac=0 b:train_k=4"}
    r = subprocess.run(["bash", str(root / "lab" / "toyworld" / "gpu_arms_sweep.sh")], cwd=root, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    runs = [json.loads(x) for x in calls.read_text().splitlines()]
    shared, recipes = runs[0], sorted(runs[1:])
    assert shared[0] == str(tmp_path / "w" / "shared") and "--seed-teacher" in shared
    assert shared[shared.index("--stages") + 1] == "base,teacher,skewed,student,export"
    assert [x[0] for x in recipes] == [str(tmp_path / "w" / n) for n in ("a", "b")]
    assert [x[x.index("--set") + 1] for x in recipes] == ["n_train=8,swap_frac=0", "n_train=8,train_k=4"]
    for x in recipes:
        assert x[x.index("--arms") + 1] == "adapter,control" and x[x.index("--stages") + 1] == "arms,eval,probe"
        assert (Path(x[0]) / "mark").is_file()  # the recipe's work dir started as a copy of the shared one




def test_gpu_arms_continue_launches_detached_and_copies_checkpoints_out(tmp_path: Path) -> None:
    """``lab/toyworld/gpu_arms_continue.sh start``, with a stand-in for ``python``: one detached
    ``lab.toyworld.fidelity`` run seeded from RUN's student and variants on rows START.., whose
    checkpoint files, progress (in card.md), log and packed results land in $OUT by the time the
    poll ends."""
    import subprocess
    import sys

    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fake.py"
    fake.write_text(
        "import json, pathlib, sys, time\n"
        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[3:]) + '\\n')\n"
        "w = pathlib.Path(sys.argv[3]); v = w / 'variants'; v.mkdir(parents=True)\n"
        "(v / 'adapter.safetensors').write_bytes(b'x'); (v / 'progress.json').write_text('{\"step\": 7}')\n"
        "print('arms: checkpoint at step 7'); time.sleep(0.5)\n"
        "p = pathlib.Path(sys.argv[sys.argv.index('--pack') + 1]); p.mkdir(); (p / 'results.tar').write_bytes(b'r')\n")
    run = tmp_path / "run"
    (run / "student_unet").mkdir(parents=True)
    (run / "init").mkdir()
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    root = Path(__file__).resolve().parents[2]
    out, work = tmp_path / "out", tmp_path / "w"
    env = {**os.environ, "PY": f"{sys.executable} {fake}", "OUT": str(out), "WORK": str(work), "RUN": str(run),
           "TEACHER": str(teacher), "N": "64", "START": "200000", "ARMS_S": "5", "POLL_S": "0.2"}
    r = subprocess.run(["bash", str(root / "lab" / "toyworld" / "gpu_arms_continue.sh"), "start", "20"], cwd=root, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "FINISHED" in r.stdout
    (args,) = [json.loads(x) for x in calls.read_text().splitlines()]
    assert args[0] == str(work) and args[args.index("--seed-student") + 1] == f"{work}.run/student_unet"
    assert args[args.index("--arm-init") + 1] == f"{work}.run/init"
    assert args[args.index("--set") + 1] == "swap_frac=0,n_adapter=64,adapter_start=200000,checkpoint_s=60"
    assert args[args.index("--limits") + 1] == "arms=5"
    assert args[args.index("--stages") + 1] == "base,teacher,skewed,student,export,arms,eval,probe"  # STAGES unset
    # progress.json rides in card.md: five arms + log, tar and card are the 8 files a call returns
    assert sorted(p.name for p in out.iterdir()) == ["adapter.safetensors", "card.md", "log.txt", "results.tar"]
    assert '{"step": 7}' in (out / "card.md").read_text()
    assert "checkpoint at step 7" in (out / "log.txt").read_text()


def test_fidelity_cli_refuses_an_unknown_set_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lab.toyworld import fidelity

    for bad in ("bogus=1", "adapter.bogus=2", "a.b.c=3"):
        with pytest.raises(SystemExit):
            fidelity.main([str(tmp_path / "w"), "--set", bad, "--stages", "base"])
        assert f"--set {bad.split('=')[0]}: not a family field" in capsys.readouterr().err
