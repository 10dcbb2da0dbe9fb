"""Backends on the tiny model: onnxruntime and torch-opt against the eager torch pipeline.

Tolerances (fp32, CPU): per graph max abs diff <= 1e-4 (measured ~1e-6), x0 <= 1e-4,
uint8 images differ by at most 1 level (rounding of values within 1e-5 of .5) — and
batch vs single gives the same x0 to 1e-4 on every backend (the compose contract).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engines.backends import BackendUnavailable, create_backend
from engines.export_onnx import example_inputs, export_onnx
from engines.graphs import TextEncoderGraph, UNetGraph, VaeDecoderGraph
from engines.random_models import write_model_dir

PROMPTS = ["a red circle", "two blue squares", "a green triangle on yellow", "x", "big purple star"]
SEEDS = [3, 1, 4, 1, 5]
MODES = ["adapter", "inject", "off", "adapter", "inject"]
TOL = 1e-4


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("backends")
    model = write_model_dir(root / "model", "tiny", adapter_init_std=0.02)
    export_onnx(model, root / "onnx", verify=False)
    backends = {
        "torch": create_backend("torch", model),
        "torch-opt": create_backend("torch-opt", model, pad_to_buckets=True, buckets=(1, 2, 4)),
        "onnxruntime": create_backend("onnxruntime", model, onnx_dir=root / "onnx"),
    }
    ref = backends["torch"]
    c, h, w = ref.h_shape
    g = torch.Generator().manual_seed(0)
    h_retr = torch.randn(len(PROMPTS), 3, c, h, w, generator=g) * 2
    lam = torch.rand(len(PROMPTS), 3, generator=g) * 0.5 + 0.5
    lam[3, 1:] = 0.0  # a sample with one neighbour, padded
    lam[4, 0] = 0.0  # inject with λ_0 = 0: no injection
    text = ref.encode_text(PROMPTS)
    return {"model": model, "onnx": root / "onnx", "b": backends, "h_retr": h_retr, "lam": lam,
            "text": text}


def _x0(backend, s, idx=None, modes=None):
    idx = list(range(len(PROMPTS))) if idx is None else idx
    text = s["text"].select(idx)
    return backend.denoise(
        text, [SEEDS[i] for i in idx], modes or [MODES[i] for i in idx], s["h_retr"][idx], s["lam"][idx]
    ).cpu()


def test_all_backends_expose_the_same_interface(setup) -> None:
    ref = setup["b"]["torch"]
    for name, b in setup["b"].items():
        assert b.backend_name == name
        assert (b.name, b.fingerprint, b.resolution, b.h_shape, b.embed_dim) == (
            ref.name, ref.fingerprint, 64, (64, 4, 4), 32,
        )


@pytest.mark.parametrize("name", ["onnxruntime", "torch-opt"])
def test_text_embeddings_match_torch(setup, name: str) -> None:
    ref = setup["text"]
    out = setup["b"][name].encode_text(PROMPTS)
    assert (out.context - ref.context).abs().max() <= 1e-5
    assert (out.pooled - ref.pooled).abs().max() <= 1e-5


def test_each_onnx_graph_matches_its_torch_module(setup) -> None:
    pipe = setup["b"]["torch"].pipe
    ort_b = setup["b"]["onnxruntime"]
    mods = {
        "text_encoder": TextEncoderGraph(pipe.text_encoder),
        "unet": UNetGraph(pipe.unet, pipe.hadapter, pipe.inject_weight),
        "vae_decoder": VaeDecoderGraph(pipe.vae),
    }
    for comp, mod in mods.items():
        inputs = example_inputs(ort_b.spec, comp, b=3, k=2, seed=7)
        with torch.no_grad():
            ref = mod(*inputs.values())
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = ort_b._run(comp, inputs)
        for r, name in zip(ref, ort_b.spec.component(comp).output_names):
            err = (got[name] - r).abs().max().item()
            assert err <= TOL, f"{comp}.{name}: {err}"


@pytest.mark.parametrize("name", ["onnxruntime", "torch-opt"])
def test_x0_and_images_match_torch_in_every_mode(setup, name: str) -> None:
    ref_b, b = setup["b"]["torch"], setup["b"][name]
    x_ref, x = _x0(ref_b, setup), _x0(b, setup)
    assert (x - x_ref).abs().max() <= TOL
    args = (setup["text"], SEEDS, MODES, setup["h_retr"], setup["lam"])
    img_ref, img = ref_b.generate(*args).images, b.generate(*args).images
    assert img.shape == (5, 64, 64, 3) and img.dtype == np.uint8
    diff = np.abs(img.astype(int) - img_ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_modes_change_the_result_far_beyond_the_tolerance(setup) -> None:
    """Parity above is meaningful: adapter and inject move x0 by much more than TOL."""
    b = setup["b"]["onnxruntime"]
    idx = [0, 1]
    off = _x0(b, setup, idx, ["off", "off"])
    ad = _x0(b, setup, idx, ["adapter", "adapter"])
    inj = _x0(b, setup, idx, ["inject", "inject"])
    assert (ad - off).abs().max() > 100 * TOL
    assert (inj - off).abs().max() > 100 * TOL
    # λ_0 = 0 with inject (sample 4) and mode off both leave x0 as without retrieval
    none = b.denoise(setup["text"].select([4]), [SEEDS[4]], "off").cpu()
    assert (_x0(b, setup, [4]) - none).abs().max() <= 1e-6


@pytest.mark.parametrize("name", ["torch", "torch-opt", "onnxruntime"])
def test_batch_and_single_agree(setup, name: str) -> None:
    b = setup["b"][name]
    batch = _x0(b, setup)
    singles = torch.cat([_x0(b, setup, [i]) for i in range(len(PROMPTS))])
    assert (batch - singles).abs().max() <= TOL  # x0 magnitudes ~30: measured ~2e-5


def test_no_retrieval_inputs_means_off(setup) -> None:
    for b in setup["b"].values():
        x_none = b.denoise(setup["text"].select([0, 1]), SEEDS[:2], "adapter").cpu()
        x_off = _x0(b, setup, [0, 1], ["off", "off"])
        assert (x_none - x_off).abs().max() <= 1e-6


def test_torch_opt_pads_batches_and_splits_above_the_largest_bucket(setup) -> None:
    b = setup["b"]["torch-opt"]
    assert b.max_batch == 4  # buckets (1, 2, 4): the 5-sample batch above ran as 4 + 1
    assert b._runners["unet"].bucket(3) == 4
    with pytest.raises(ValueError, match="k=9 neighbours exceeds"):
        c, h, w = b.h_shape
        b.denoise(setup["text"].select([0]), [0], "adapter", torch.zeros(1, 9, c, h, w), torch.zeros(1, 9))


def test_bad_retrieval_shapes_fail_with_the_shapes(setup) -> None:
    b = setup["b"]["onnxruntime"]
    with pytest.raises(ValueError, match=r"h_retr must be \(B=1,k,64,4,4\)"):
        b.denoise(setup["text"].select([0]), [0], "adapter", torch.zeros(1, 1, 64, 2, 2), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="unknown retrieval mode"):
        b.denoise(setup["text"].select([0]), [0], "bogus")


def test_ingest_calls_delegate_to_torch(setup) -> None:
    ref, b = setup["b"]["torch"], setup["b"]["onnxruntime"]
    imgs = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    lat = b.encode_images(imgs)
    assert torch.equal(lat, ref.encode_images(imgs))
    ctx = setup["text"].context[:2]
    assert torch.equal(b.retrieval_features(lat, ctx), ref.retrieval_features(lat, ctx))


# ---------------------------------------------------------------- refusals
def test_onnxruntime_cuda_without_the_cuda_provider_is_unavailable(setup) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(BackendUnavailable, match="CUDA execution provider"):
        create_backend("onnxruntime", setup["model"], device="cuda", onnx_dir=setup["onnx"])


def test_export_of_another_model_is_refused(setup, tmp_path: Path) -> None:
    other = write_model_dir(tmp_path / "other", "tiny", seed=1)
    with pytest.raises(BackendUnavailable, match="fingerprint"):
        create_backend("onnxruntime", other, onnx_dir=setup["onnx"])
    with pytest.raises(BackendUnavailable, match="no manifest.json"):
        create_backend("onnxruntime", other, onnx_dir=tmp_path)
    with pytest.raises(BackendUnavailable, match="needs onnx_dir"):
        create_backend("onnxruntime", other)


def test_unknown_backend_and_missing_tensorrt(setup) -> None:
    with pytest.raises(ValueError, match="unknown backend 'tvm'"):
        create_backend("tvm", setup["model"])
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
            create_backend("tensorrt", setup["model"], device="cuda", engine_dir=setup["onnx"])
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="no CUDA device"):
            create_backend("torch-opt", setup["model"], device="cuda")


def test_a_query_gated_adapter_runs_alike_on_every_backend(tmp_path: Path) -> None:
    """A model whose adapter has an open ``query_gate`` (issue 13's eighth run): the ONNX
    graph, torch-opt and the fast runner carry the gate, and it changes the adapter's output."""
    from engines.hadapter import HAdapter

    model = write_model_dir(tmp_path / "model", "tiny", adapter_init_std=0.02)
    old = HAdapter.from_pretrained(model / "hadapter", local_files_only=True)
    gated = HAdapter(**{**dict(old.config), "query_gate": True}).eval()
    gated.load_state_dict({**old.state_dict(), "q_gate": torch.ones(old.config.channels)})
    gated.save_pretrained(str(model / "hadapter"), safe_serialization=True)
    export_onnx(model, tmp_path / "onnx", verify=False)
    b = {"torch": create_backend("torch", model),
         "torch-opt": create_backend("torch-opt", model, pad_to_buckets=True, buckets=(1, 2, 4)),
         "onnxruntime": create_backend("onnxruntime", model, onnx_dir=tmp_path / "onnx")}
    c, h, w = b["torch"].h_shape
    g = torch.Generator().manual_seed(0)
    h_retr, lam = torch.randn(2, 1, c, h, w, generator=g) * 2, torch.full((2, 1), 0.8)
    text = b["torch"].encode_text(PROMPTS[:2])
    x = {k: v.denoise(text, SEEDS[:2], ["adapter"] * 2, h_retr, lam).cpu() for k, v in b.items()}
    for k in ("torch-opt", "onnxruntime"):
        assert (x[k] - x["torch"]).abs().max() <= TOL, k
    args = (text, SEEDS[:2], ["adapter"] * 2, h_retr, lam)
    img_ref = b["torch"].generate(*args).images  # the fast runner has no denoise(): its images
    img_fast = create_backend("fast", model).generate(*args).images
    assert np.abs(img_fast.astype(int) - img_ref.astype(int)).max() <= 1
    ungated = create_backend("torch", write_model_dir(tmp_path / "plain", "tiny", adapter_init_std=0.02))
    x_plain = ungated.denoise(text, SEEDS[:2], ["adapter"] * 2, h_retr, lam).cpu()
    assert (x["torch"] - x_plain).abs().max() > 100 * TOL  # the gate is in the graph, not dropped
    assert np.abs(ungated.generate(*args).images.astype(int) - img_ref.astype(int)).max() > 1  # and in the images
