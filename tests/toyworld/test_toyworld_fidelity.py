"""Issue 13 at micro size on CPU: the data that gives retrieval a job, the UNet layouts, the
swap probe, variant files, the fidelity evaluation and the recipe drivers (seeding, the GPU
sweep). The arm stage's tests: ``test_toyworld_arms.py``; shared fixtures: ``conftest.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from toyworld.models.configs import get_family


# ---------------------------------------------------------------- data
def test_adapter_split_never_names_a_held_out_rare_pair() -> None:
    from toyworld.models.data import HELD_OUT_RARE, SEEN_RARE, make_split, rare_group

    sp = make_split("adapter", 600, workers=1)
    assert not any(set(s.colour_shape_pairs()) & HELD_OUT_RARE for s in sp.specs)
    # the seen rare pairs are at their natural rate, unlike the skewed train split
    seen = sum(rare_group(s) == "seen_rare" for s in sp.specs)
    train = make_split("train", 600, workers=1)
    assert seen > 3 * max(1, int(train.long_tail.sum()))
    assert len(HELD_OUT_RARE) == 4 and len(SEEN_RARE) == 4


def test_eval_prompts_cover_every_group() -> None:
    from toyworld.models.data import eval_prompts, rare_group
    from toyworld.parse import parse

    p, _ = eval_prompts(20, 40)
    groups = {rare_group(parse(x)) for x in p}
    assert groups == {"common", "seen_rare", "held_out_rare"}


def test_skewed_split_keeps_the_skew_and_never_shows_a_held_out_pair() -> None:
    from toyworld.models.data import HELD_OUT_RARE, make_split

    sk = make_split("skewed", 600, workers=1)
    assert not any(set(s.colour_shape_pairs()) & HELD_OUT_RARE for s in sk.specs)
    nat = make_split("natural", 600, workers=1)
    assert sk.long_tail.mean() < nat.long_tail.mean() / 4  # rare pairs kept with p = 0.03


def test_natural_split_has_rare_pairs_at_the_natural_rate() -> None:
    from toyworld.models.data import make_split

    nat = make_split("natural", 400, workers=1)
    assert nat.long_tail.mean() > 0.15  # 8 of 40 (colour, shape) pairs per object


# ---------------------------------------------------------------- layouts
def _blocks(kind: str) -> tuple[list[bool], bool, list[bool]]:
    from diffusers import UNet2DConditionModel

    u = UNet2DConditionModel(**get_family("tiny", unet_layout=kind).unet_kwargs())
    down = [getattr(b, "has_cross_attention", False) for b in u.down_blocks]
    up = [getattr(b, "has_cross_attention", False) for b in u.up_blocks]
    return down, bool(getattr(u.mid_block, "has_cross_attention", False)), up


def test_unet_layouts_place_cross_attention_as_documented() -> None:
    assert _blocks("xattn") == ([True] * 3, True, [True] * 3)
    assert _blocks("sd") == ([True, True, False], True, [False, True, True])  # none at the H level
    assert _blocks("mid") == ([False] * 3, True, [False] * 3)  # text only reaches H
    with pytest.raises(ValueError, match="unet_layout"):
        get_family("tiny", unet_layout="nope").unet_kwargs()


# ---------------------------------------------------------------- probe, variants, eval (micro model dirs: conftest.py)


def test_probe_swap_text_is_a_no_op_only_without_decoder_cross_attention(dirs: dict[str, Path]) -> None:
    from toyworld.models.data import eval_prompts
    from toyworld.probe import PROBE_MODES, probe

    prompts, _ = eval_prompts(3, 3)
    res = {k: probe(d, prompts, 1, device="cpu", workers=1) for k, d in dirs.items()}
    for r in res.values():
        assert set(PROBE_MODES) <= set(r["modes"])
        assert r["renders"]["own_vs_own"] > 0.95  # the oracle renders answer their prompts
    mid = res["mid"]["modes"]
    assert mid["swap_text"] == mid["own"]  # the decoder never reads the caption
    assert res["mid"]["layout"]["up"] == ["UpBlock2D"] * 3


@torch.no_grad()
def test_decoder_text_swap_changes_the_output_only_with_cross_attention(dirs: dict[str, Path]) -> None:
    from engines.pipeline import OneStepPipeline

    outs = {}
    for k, d in dirs.items():
        p = OneStepPipeline.from_pretrained(d)
        a, b = p.encode_text(["a red circle"]), p.encode_text(["three blue squares"])
        z = p.noisy_input(p.initial_noise([0]))
        t = torch.full((1,), 999)
        h, s, e = p.unet.encode(z, t, a.context)
        outs[k] = (p.unet.decode(h, s, e, b.context) - p.unet.decode(h, s, e, a.context)).abs().max().item()
    assert outs["mid"] == 0.0 and outs["xattn"] > 0.0


def test_arm_variants_restore_to_model_dirs_and_pack_under_the_size_cap(
        dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import tarfile

    from engines.pipeline import OneStepPipeline
    from toyworld import fidelity

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
    from toyworld import fidelity
    from toyworld.ship import ship

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
    from toyworld import fidelity
    from toyworld.fideval import apply_variant
    from toyworld.ship import ship, shipped_variants

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


def test_variant_file_round_trip(dirs: dict[str, Path], tmp_path: Path) -> None:
    from engines.pipeline import OneStepPipeline
    from toyworld.fideval import apply_variant, save_variant

    a = OneStepPipeline.from_pretrained(dirs["mid"])
    with torch.no_grad():
        for p in a.unet.unet.up_blocks.parameters():
            p.add_(0.01)
        a.hadapter.proj_out.weight.fill_(0.001)
    f = save_variant(a, tmp_path / "v.safetensors")
    b = OneStepPipeline.from_pretrained(dirs["mid"])
    apply_variant(b, f)
    for (k, v), (_, w) in zip(a.unet.unet.state_dict().items(), b.unet.unet.state_dict().items(), strict=True):
        assert torch.allclose(v, w, atol=1e-3), k
    assert torch.allclose(b.hadapter.proj_out.weight, torch.full_like(b.hadapter.proj_out.weight, 0.001), atol=1e-5)


def test_evaluate_reports_modes_groups_and_intervals(dirs: dict[str, Path]) -> None:
    from engines.pipeline import OneStepPipeline
    from toyworld.fideval import Suite, evaluate, format_table
    from toyworld.models.data import eval_prompts

    p = OneStepPipeline.from_pretrained(dirs["mid"])
    suite = Suite({"student": p, "adapter": p, "control": p, "real": p}, None, "test")
    prompts, _ = eval_prompts(3, 5)
    res = evaluate(prompts, suite, seeds_per_prompt=1, n_retrieval=16, batch=8, workers=1, n_boot=200)
    assert set(res["modes"]) == {"student", "inject", "adapter", "adapter_k4", "control", "shuffled_test", "oracle",
                                 "real", "real_shuffled_test", "shuffled_own_lam"}
    # the real arm's shuffled test is the adapter's with the real arm's weights: the same here
    assert res["comparisons"]["real_shuffled_test-control"] == res["comparisons"]["shuffled_test-control"]
    for r in res["modes"].values():
        assert r["n"] == 8 and {"common", "seen_rare", "held_out_rare", "nb_full", "nb_partial"} <= set(r)
    # the same model in both arms: identical images, a zero difference with a zero-width interval
    same = res["comparisons"]["adapter-control"]["overall"]
    assert same["diff"] == 0.0 and same["lo"] == 0.0 and same["hi"] == 0.0
    assert "held-out-rare" in format_table(res)


def test_paired_bootstrap_interval() -> None:
    from toyworld.scoring import paired_bootstrap, per_prompt

    rng = np.random.default_rng(0)
    a = rng.random(200)
    r = paired_bootstrap(a + 0.1, a, 500)
    assert abs(r["diff"] - 0.1) < 1e-9 and r["lo"] <= 0.1 <= r["hi"]
    noisy = paired_bootstrap(rng.random(200), rng.random(200), 500)
    assert noisy["lo"] < noisy["diff"] < noisy["hi"]
    assert per_prompt([1, 0, 1, 1], 2).tolist() == [0.5, 1.0]


def test_shipped_assets_load_and_stay_small() -> None:
    from toyworld.fideval import ASSETS, Suite

    for f in ASSETS.rglob("*.safetensors"):
        assert f.stat().st_size < 20 * 2**20, f
    suite = Suite.from_shipped(torch.device("cpu"))
    assert {"student", "adapter", "control"} <= set(suite.pipes)
    # the variants share the frozen encoder (one retrieval database serves them all)
    enc = [{k: v for k, v in p.unet.unet.state_dict().items() if k.startswith("down_blocks.")} for p in suite.pipes.values()]
    assert all(all(torch.equal(e[k], enc[0][k]) for k in e) for e in enc[1:])


def test_cli_eval_defaults_to_the_shipped_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import toyworld.fideval as fe
    from ragturbo.cli import _register_all, app

    real = fe.evaluate
    seen: dict[str, object] = {}

    def small(prompts, suite, seeds, n_retrieval, modes=None):  # type: ignore[no-untyped-def]
        seen["source"] = suite.source
        return real(prompts, suite, 1, 16, modes=("student", "adapter", "control"), workers=1, n_boot=50)

    monkeypatch.setattr(fe, "evaluate", small)
    f = tmp_path / "prompts.txt"
    f.write_text("a green square\na red triangle\n")
    _register_all()
    out = CliRunner().invoke(app, ["toyworld", "eval", "--prompts", str(f), "--json", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    js = json.loads(out.output[out.output.index("{"):])
    assert set(js["modes"]) == {"student", "adapter", "control"} and js["shipped_variant"] == "adapter"
    assert "assets" in str(seen["source"])


# ---------------------------------------------------------------- recipe drivers


def test_seed_student_takes_an_earlier_runs_student(dirs: dict[str, Path], tmp_path: Path) -> None:
    from toyworld import fidelity
    from toyworld.models.configs import get_family

    cfg = get_family("tiny-mid")
    w = tmp_path / "w"
    fidelity.seed_from_shipped(cfg, w, dirs["mid"] / "unet", dirs["mid"], student_unet=dirs["xattn"] / "unet")
    assert (w / "student" / "unet" / "config.json").read_text() == (dirs["xattn"] / "unet" / "config.json").read_text()
    assert [s for s in fidelity.STAGES if (w / s / "done.json").is_file()] == ["base", "teacher", "skewed", "student"]
    with pytest.raises(FileNotFoundError, match="student UNet"):
        fidelity.seed_from_shipped(cfg, tmp_path / "w2", dirs["mid"] / "unet", dirs["mid"], student_unet=tmp_path / "none")


@pytest.mark.parametrize(("mode", "k"), [("off", 1), ("inject", 1), ("adapter", 1), ("adapter", 4)])
def test_fideval_compose_images_equal_the_direct_path(dirs: dict[str, Path], mode: str, k: int) -> None:
    """The eval's one-step modes go through retrieval.compose: the same images as the direct
    pipeline calls that made the published tables (search, gather, λ by hand)."""
    from engines.pipeline import OneStepPipeline
    from retrieval.compose import TextToImage
    from toyworld.fideval import Database, compose_images

    pipe = OneStepPipeline.from_pretrained(dirs["mid"])
    torch.manual_seed(3)
    with torch.no_grad():  # a non-zero adapter, so the neighbours change the image
        for prm in pipe.hadapter.proj_out.parameters():
            prm.normal_(0, 0.2)
    db = Database.build(pipe, 24)
    prompts = ["a red circle", "two blue squares", "a small green triangle above a yellow cross"]
    seeds = [0, 1001, 7]
    with torch.no_grad():
        text = pipe.encode_text(prompts)
        lam, idx = db.search(text.pooled, k)
        old = pipe.generate(text, seeds, mode, db.features[idx], lam).images
    new = compose_images(TextToImage(pipe, db.as_retrieval_db(), retrieval_timeout_s=None), prompts, seeds, mode, k)
    assert new.dtype == np.uint8 and new.shape == old.shape
    assert np.array_equal(new, old), np.abs(new.astype(int) - old).max()
    if mode == "adapter":
        plain = compose_images(TextToImage(pipe, db.as_retrieval_db(), retrieval_timeout_s=None), prompts, seeds, "off")
        assert not np.array_equal(new, plain)  # the equality covers the retrieval path


def test_database_score_is_the_services_lambda_for_any_pair(dirs: dict[str, Path]) -> None:
    """``Database.score`` (the ``shuffled_own_lam`` mode's λ): for ``search``'s own indices it
    is ``search``'s λ; for another prompt's neighbour it is the cosine of that neighbour's own
    caption with the prompt (0 where not positive), not the right neighbour's."""
    from engines.pipeline import OneStepPipeline
    from toyworld.fideval import Database

    pipe = OneStepPipeline.from_pretrained(dirs["mid"])
    db = Database.build(pipe, 24)
    with torch.no_grad():
        pooled = pipe.encode_text(["a red circle", "two blue squares", "a small green triangle above a yellow cross"]).pooled
    lam, idx = db.search(pooled, 2)
    assert torch.allclose(db.score(pooled, idx), lam, atol=1e-6)
    wrong = idx[:, :1].roll(1, 0)
    cos = torch.nn.functional.normalize(pooled.float(), dim=-1) @ db.pooled.T
    want = cos.gather(1, wrong).clamp(min=0)
    assert torch.allclose(db.score(pooled, wrong), want, atol=1e-6)
    assert not torch.allclose(want, lam[:, :1])  # a wrong pair scores differently from the right one


def test_seed_teacher_marks_base_and_teacher_only(dirs: dict[str, Path], tmp_path: Path) -> None:
    """``--seed-teacher``: the given teacher UNet becomes the teacher stage; skewed and student
    are left to train."""
    from toyworld import fidelity
    from toyworld.models.configs import get_family

    cfg = get_family("tiny-mid")
    with pytest.raises(FileNotFoundError, match="config.json"):
        fidelity.seed_teacher(cfg, tmp_path / "bad", tmp_path / "nowhere", dirs["mid"])
    w = tmp_path / "w"
    fidelity.seed_teacher(cfg, w, dirs["mid"] / "unet", dirs["mid"])
    assert (w / "teacher" / "unet" / "config.json").is_file() and (w / "vae").is_dir()
    assert [s for s in fidelity.STAGES if (w / s / "done.json").is_file()] == ["base", "teacher"]


def test_gpu_arms_sweep_trains_once_then_forks_one_process_per_recipe(tmp_path: Path) -> None:
    """``toyworld/gpu_arms_sweep.sh`` with a stand-in for ``python``: one shared run (teacher
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
    r = subprocess.run(["bash", str(root / "toyworld" / "gpu_arms_sweep.sh")], cwd=root, env=env,
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
    """``toyworld/gpu_arms_continue.sh start``, with a stand-in for ``python``: one detached
    ``toyworld.fidelity`` run seeded from RUN's student and variants on rows START.., whose
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
    r = subprocess.run(["bash", str(root / "toyworld" / "gpu_arms_continue.sh"), "start", "20"], cwd=root, env=env,
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
    from toyworld import fidelity

    for bad in ("bogus=1", "adapter.bogus=2", "a.b.c=3"):
        with pytest.raises(SystemExit):
            fidelity.main([str(tmp_path / "w"), "--set", bad, "--stages", "base"])
        assert f"--set {bad.split('=')[0]}: not a family field" in capsys.readouterr().err
