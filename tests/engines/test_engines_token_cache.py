"""The fast backend's tokenizer cache: a batch mixing the oldest cached prompts with new
ones is served whole (no KeyError that fails every request of the batch)."""

from __future__ import annotations

from pathlib import Path

import torch

from engines.token_cache import TokenCache


def _fake_tokenize(calls: list[list[str]]):
    def tok(prompts: list[str]) -> torch.Tensor:
        calls.append(list(prompts))
        return torch.tensor([[hash(p) % 1000, len(p)] for p in prompts], dtype=torch.int64)

    return tok


def test_oldest_entry_plus_new_prompts_at_capacity() -> None:
    calls: list[list[str]] = []
    cache = TokenCache(_fake_tokenize(calls), capacity=4096)
    cache.ids([f"p{i}" for i in range(4096)])
    out = cache.ids(["p0", "new"])  # p0 is the oldest entry; inserting "new" evicts one
    assert out.shape == (2, 2)
    assert out[0].tolist() == [hash("p0") % 1000, 2]
    assert calls[-1] == ["new"]  # p0 came from the cache
    assert len(cache) == 4096 and "p0" in cache and "p1" not in cache  # p0 was refreshed


def test_batch_larger_than_capacity_and_repeats() -> None:
    calls: list[list[str]] = []
    cache = TokenCache(_fake_tokenize(calls), capacity=2)
    prompts = ["a", "b", "a", "c", "d", "b"]
    out = cache.ids(prompts)
    assert [r[1].item() for r in out] == [1] * 6
    assert out[0].tolist() == out[2].tolist() and out[1].tolist() == out[5].tolist()
    assert calls == [["a", "b", "c", "d"]]  # each distinct prompt tokenized once
    assert len(cache) == 2


def test_fast_backend_tokenize_on_cpu(tiny_model_dir: Path) -> None:
    from engines.backends.fast_backend import FastBackend

    be = FastBackend.from_model_dir(tiny_model_dir, device="cpu", tokenizer_cache=8)
    be.tokenize([f"p{i}" for i in range(8)])
    ids = be.tokenize(["p0", "new", "p0"])
    assert ids.shape == (3, be.pipe.max_length)
    assert torch.equal(ids[0], ids[2])
    assert torch.equal(ids[0], be.tokenize(["p0"])[0])
