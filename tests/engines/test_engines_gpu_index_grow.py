"""The device index grows without losing a row: what the fast backend does when ingest fills it."""

from __future__ import annotations

import pytest
import torch

from engines.fast.gpu_index import GpuIndex, IndexFull


@pytest.mark.parametrize("feature_dtype", ["float16", "float8"])
def test_a_grown_index_finds_and_gathers_every_old_row_and_takes_new_ones(feature_dtype: str) -> None:
    g = torch.Generator().manual_seed(0)
    idx = GpuIndex(16, (2, 2, 2), 8, torch.device("cpu"), torch.float32, feature_dtype, min_rows=4)
    emb, feat = torch.randn(8, 16, generator=g), torch.randn(8, 2, 2, 2, generator=g)
    idx.append(emb, feat)
    with pytest.raises(IndexFull):
        idx.append(emb[:1], feat[:1])
    new = idx.grown(32, min_rows=4)
    assert (new.capacity, new.n, new.feature_dtype) == (32, 8, feature_dtype)
    _, rows = new.search(emb, 1)
    assert rows[:, 0].tolist() == list(range(8))  # each stored caption finds its own row
    assert torch.equal(new.gather(rows), idx.gather(rows))  # features (and fp8 scales) copied
    assert new.append(emb[:2], feat[:2]) == range(8, 10)
    assert torch.isinf(new.search(emb, 32)[0][:, -1]).all()  # rows past n stay closed
