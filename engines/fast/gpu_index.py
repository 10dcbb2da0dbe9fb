"""The device copy of the retrieval database that the serving engine searches inside its graph.

``GpuIndex`` holds, on the engine's device, the unit-normalised pooled caption embeddings
(capacity, D) and the retrieved-branch H-features (capacity, C, h, w) of the stored pairs.
Exact cosine top-k is one matrix product and one ``topk``: no host round trip, so it is
captured in the same CUDA graph as the text encoder, the UNet and the VAE.

Buffers are preallocated to a capacity, so rows can be appended (pairs ingested while the
service runs) without re-capturing graphs: a row is searchable once its additive bias is 0
(unused rows carry -inf, score -inf, λ 0). H-features are kept in float16, or in float8
(e4m3) with one float32 scale per row, which halves the memory (the paper's 630K pairs at
SD-Turbo's 1280x8x8 are ~103 GB in fp16, ~52 GB in fp8); the error is measured in
docs/perf.md. The engine knows only rows; ``retrieval.resident`` maps rows to pair ids.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

FeatureDtype = Literal["float16", "float8"]
FP8_MAX = 448.0  # largest finite float8_e4m3fn


class IndexFull(RuntimeError):
    """Appending would exceed the preallocated capacity (the caller re-allocates)."""


class GpuIndex:
    """Caption embeddings + H-features of ``capacity`` rows on ``device``.

    Args:
        dim: width of the pooled text embedding.
        h_shape: (C, h, w) of one H-feature.
        capacity: rows preallocated (at least ``min_rows``, so top-k always has k rows).
        dtype: compute dtype of the search matrix and of the gathered features.
        feature_dtype: storage of the H-features ("float16" or "float8").
    """

    def __init__(
        self,
        dim: int,
        h_shape: tuple[int, int, int],
        capacity: int,
        device: torch.device,
        dtype: torch.dtype = torch.float16,
        feature_dtype: FeatureDtype = "float16",
        min_rows: int = 8,
    ) -> None:
        if feature_dtype not in ("float16", "float8"):
            raise ValueError(f"feature_dtype must be float16 or float8, got {feature_dtype!r}")
        self.dim = int(dim)
        self.h_shape = tuple(int(x) for x in h_shape)
        self.capacity = max(int(capacity), int(min_rows))
        self.device = torch.device(device)
        self.dtype = dtype
        self.feature_dtype = feature_dtype
        cap = self.capacity
        self.emb = torch.zeros((cap, self.dim), dtype=dtype, device=self.device)
        self.bias = torch.full((cap,), -math.inf, dtype=torch.float32, device=self.device)
        if feature_dtype == "float8":
            self.feat = torch.zeros((cap, *self.h_shape), dtype=torch.uint8, device=self.device)
            self.scale = torch.ones((cap,), dtype=torch.float32, device=self.device)
        else:
            self.feat = torch.zeros((cap, *self.h_shape), dtype=dtype, device=self.device)
            self.scale = None
        self.n = 0

    def grown(self, capacity: int, min_rows: int = 8) -> GpuIndex:
        """A new index of ``capacity`` rows (same widths and dtypes) holding this one's rows."""
        new = GpuIndex(self.dim, self.h_shape, capacity, self.device, self.dtype, self.feature_dtype,
                       min_rows=min_rows)
        n = new.n = self.n
        new.emb[:n], new.feat[:n], new.bias[:n] = self.emb[:n], self.feat[:n], self.bias[:n]
        if self.scale is not None and new.scale is not None:
            new.scale[:n] = self.scale[:n]
        return new

    # ------------------------------------------------------------------ writes
    def append(self, embeddings: torch.Tensor, features: torch.Tensor) -> range:
        """Add rows (m,D) + (m,C,h,w); returns their row numbers. Raises IndexFull.

        Data is written before the bias opens the rows, so a search running on the same
        stream never sees a half-written row.
        """
        m = int(embeddings.shape[0])
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"embeddings must be (m,{self.dim}), got {tuple(embeddings.shape)}")
        if tuple(features.shape) != (m, *self.h_shape):
            raise ValueError(
                f"features must be ({m},{','.join(map(str, self.h_shape))}), got {tuple(features.shape)}"
            )
        if self.n + m > self.capacity:
            raise IndexFull(f"{self.n} + {m} rows exceed the capacity {self.capacity}")
        rows = slice(self.n, self.n + m)
        e = F.normalize(embeddings.to(self.device, torch.float32), dim=1)
        self.emb[rows] = e.to(self.dtype)
        f = features.to(self.device, torch.float32)
        if self.scale is not None:
            amax = f.abs().flatten(1).amax(1).clamp_min(1e-12)
            s = amax / FP8_MAX
            q = (f / s[:, None, None, None]).to(torch.float8_e4m3fn)
            self.feat[rows] = q.view(torch.uint8)
            self.scale[rows] = s
        else:
            self.feat[rows] = f.to(self.feat.dtype)
        self.bias[rows] = 0.0
        self.n += m
        return range(rows.start, rows.stop)

    # ------------------------------------------------------------------ graph stages
    def search(self, pooled: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """pooled (B,D) -> cosine scores (B,k) float32 (−inf for empty rows), rows (B,k) int64."""
        q = F.normalize(pooled.float(), dim=1).to(self.dtype)
        s = torch.mm(q, self.emb.t()).float() + self.bias
        scores, rows = torch.topk(s, k, dim=1)
        return scores, rows

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (B,k) -> H-features (B,k,C,h,w) in ``dtype``."""
        b, k = rows.shape
        flat = rows.reshape(-1)
        f = self.feat.index_select(0, flat)
        if self.scale is not None:
            f = f.view(torch.float8_e4m3fn).to(torch.float32) * self.scale.index_select(0, flat)[
                :, None, None, None
            ]
        return f.to(self.dtype).reshape(b, k, *self.h_shape)

    def nbytes(self) -> int:
        extra = self.scale.numel() * 4 if self.scale is not None else 0
        return (
            self.emb.numel() * self.emb.element_size()
            + self.feat.numel() * self.feat.element_size()
            + self.bias.numel() * 4
            + extra
        )
