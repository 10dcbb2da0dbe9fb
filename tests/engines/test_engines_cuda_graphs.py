"""engines.cuda_graphs: the one capture of CUDA graphs per bucket (torch-opt and fast).

On CPU: the eager fallback, bucket choice, padding and the refusals. On CUDA (``-m gpu``,
no torch.compile, the tiny model): a captured graph replays what the eager code computes,
for the primitive itself, torch-opt's padded buckets and the fast runner's stages.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engines.cuda_graphs import PaddedBucketRunner, capture_graphs, replayer
from engines.shapes import bucket_for

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_bucket_for_picks_the_smallest_bucket_that_holds_n() -> None:
    assert [bucket_for(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    with pytest.raises(ValueError, match="batch 9 exceeds the largest bucket 8"):
        bucket_for(9, (1, 2, 4, 8))
    with pytest.raises(ValueError, match="k 5 exceeds the largest bucket 4"):
        bucket_for(5, (1, 4), "k")


def test_eager_fallback_runs_each_function_once_and_keeps_it() -> None:
    calls: list[str] = []
    fns = {"a": lambda: calls.append("a") or 1, "b": lambda: calls.append("b") or 2}
    graphs, outputs = capture_graphs(fns, "cpu", enabled=False, warmup=5)
    assert calls == ["a", "b"] and outputs == {}
    assert graphs == fns and replayer(graphs["b"])() == 2


def test_capture_refuses_a_cpu_device() -> None:
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device, got cpu"):
        capture_graphs({"a": lambda: 1}, "cpu")


def _rowwise(x: torch.Tensor, h_retr: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise in the batch: (x + Σ_k λ_k h_k) and the batch size it was called with."""
    mixed = x + (lam[:, :, None] * h_retr).sum(1)
    return mixed, torch.full((x.shape[0],), float(x.shape[0]))


def test_padded_runner_pads_to_the_bucket_and_drops_the_padding() -> None:
    run = PaddedBucketRunner(_rowwise, ["x", "h_retr", "lam"], (4, 1, 2, 2), k_pad=3, cuda_graphs=False)
    assert run.buckets == (1, 2, 4) and run.bucket(3) == 4
    g = torch.Generator().manual_seed(0)
    x, hr, lam = torch.randn(3, 5, generator=g), torch.randn(3, 2, 5, generator=g), torch.rand(3, 2, generator=g)
    mixed, ran_at = run({"x": x, "h_retr": hr, "lam": lam})
    assert mixed.shape == (3, 5) and torch.equal(ran_at, torch.full((3,), 4.0))  # ran as bucket 4
    # the third neighbour padded with λ=0 adds exactly nothing
    assert torch.allclose(mixed, _rowwise(x, hr, lam)[0], atol=1e-6)
    assert run.graphs == {}  # eager: nothing captured


def test_padded_runner_refuses_too_large_a_batch_or_k() -> None:
    run = PaddedBucketRunner(_rowwise, ["x", "h_retr", "lam"], (1, 2), k_pad=2, cuda_graphs=False)
    with pytest.raises(ValueError, match="batch 3 exceeds the largest bucket 2"):
        run({"x": torch.zeros(3, 5), "h_retr": torch.zeros(3, 1, 5), "lam": torch.zeros(3, 1)})
    with pytest.raises(ValueError, match="k=3 exceeds k_max 2"):
        run({"x": torch.zeros(1, 5), "h_retr": torch.zeros(1, 3, 5), "lam": torch.zeros(1, 3)})


def test_padded_runner_makes_the_named_inputs_channels_last() -> None:
    seen: list[bool] = []

    def fn(latent: torch.Tensor) -> torch.Tensor:
        seen.append(latent.is_contiguous(memory_format=torch.channels_last))
        return latent * 2

    run = PaddedBucketRunner(fn, ["latent"], (2,), None, False, channels_last_inputs=("latent",))
    x = torch.randn(1, 4, 3, 3)
    (out,) = run({"latent": x})
    assert seen == [True] and torch.equal(out, x * 2)


# ---------------------------------------------------------------- CUDA (-m gpu)

PROMPTS, SEEDS, MODES = ["a red circle", "two blue squares", "x"], [3, 1, 4], ["adapter", "inject", "off"]


def _neighbours(h_shape: tuple[int, int, int], k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (h_retr, λ) for the three PROMPTS: 3 rows, so bucket 4 pads one."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(len(PROMPTS), k, *h_shape, generator=g), torch.rand(len(PROMPTS), k, generator=g)


@pytest.mark.gpu
@needs_cuda
def test_captured_graphs_replay_new_inputs_in_a_shared_pool() -> None:
    x = torch.randn(4, 8, device="cuda")
    w = torch.randn(8, 8, device="cuda")
    fns = {"mm": lambda: x @ w, "relu": lambda: torch.relu(x)}
    graphs, outs = capture_graphs(fns, x.device, pool=torch.cuda.graph_pool_handle(), warmup=2)
    x.copy_(torch.randn(4, 8, device="cuda"))  # a static input changes in place
    for name in fns:
        replayer(graphs[name])()
    torch.cuda.synchronize()
    assert torch.allclose(outs["mm"], x @ w, atol=1e-5) and torch.equal(outs["relu"], torch.relu(x))


@pytest.mark.gpu
@needs_cuda
def test_torch_opt_graphs_without_compile_match_its_eager_padding(tmp_path: Path) -> None:
    from engines.backends import create_backend
    from engines.random_models import write_model_dir

    model = write_model_dir(tmp_path / "m", "tiny", adapter_init_std=0.02)
    kw = {"compile": False, "buckets": (1, 4), "channels_last": True}
    eager = create_backend("torch-opt", model, "cuda", torch.float32, cuda_graphs=False, pad_to_buckets=True, **kw)
    graphs = create_backend("torch-opt", model, "cuda", torch.float32, cuda_graphs=True, **kw)
    hr, lam = _neighbours(eager.h_shape)
    text = eager.encode_text(PROMPTS)
    want = eager.denoise(text, SEEDS, MODES, hr, lam).float().cpu()
    got = graphs.denoise(text, SEEDS, MODES, hr, lam).float().cpu()
    again = graphs.denoise(text.select([0]), SEEDS[:1], MODES[:1], hr[:1], lam[:1]).float().cpu()
    assert (got - want).abs().max() <= 1e-3 * want.abs().max()
    assert (again - want[:1]).abs().max() <= 1e-3 * want.abs().max()
    assert sorted(graphs._runners["unet"].graphs) == [1, 4]


@pytest.mark.gpu
@needs_cuda
def test_fast_runner_graphs_without_compile_match_eager(tiny_model_dir: Path) -> None:
    from engines.fast.gpu_index import GpuIndex
    from engines.fast.runner import FastConfig, FastRunner
    from engines.pipeline import OneStepPipeline

    pipe = OneStepPipeline.from_pretrained(tiny_model_dir, device="cuda", dtype=torch.float16)
    for m in pipe.modules().values():  # as FastBackend does: stage timing runs outside inference mode
        m.eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    index = GpuIndex(pipe.embed_dim, pipe.h_shape, 16, pipe.device, pipe.dtype)
    index.append(torch.randn((10, pipe.embed_dim), generator=g), torch.randn((10, *pipe.h_shape), generator=g))
    runner = FastRunner(pipe, 2, config=FastConfig(compile="none"), index=index)
    assert runner.use_graphs
    x = runner.example_inputs(2, "search", seed=7)  # other values than the captured example's
    want = runner.run("search", **x)  # no bucket yet: eager
    runner.prepare(2, "search", stages=True)
    got = runner.run("search", **x)  # replays the captured "full" graph
    assert torch.equal(got[1], want[1])  # the same neighbours
    assert int((got[0].int() - want[0].int()).abs().max()) <= 1
    assert set(runner.stage_ms(2)) == {"text", "retrieval", "unet", "vae", "full"}
    runner.stage_callable(2, "vae")()  # a stage graph replays


@pytest.mark.gpu
@needs_cuda
def test_fast_backend_graphs_without_compile_match_eager(tiny_model_dir: Path) -> None:
    """The backend's padded buckets (3 -> 4) captured on first use equal its eager run."""
    from engines.backends import create_backend

    kw = {"compile": "none", "buckets": (1, 4), "k_buckets": (2,)}
    eager = create_backend("fast", tiny_model_dir, "cuda", cuda_graphs=False, **kw)
    graphs = create_backend("fast", tiny_model_dir, "cuda", cuda_graphs=True, **kw)
    hr, lam = _neighbours(eager.h_shape)
    want = eager.generate(eager.encode_text(PROMPTS), SEEDS, MODES, hr, lam).images
    got = graphs.generate(graphs.encode_text(PROMPTS), SEEDS, MODES, hr, lam).images
    assert got.shape == want.shape == (3, 64, 64, 3)
    assert int(abs(got.astype(int) - want.astype(int)).max()) <= 1
    assert {(b, v) for b, v, _ in graphs.runner.buckets} == {(4, "text"), (4, "given")}
