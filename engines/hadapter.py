"""The H-adapter: cross-attention from the target's H-tokens to retrieved H-tokens.

h = h_t + Σ_k λ_k · Block(h_t, h_r,k) / max(1, Σ_k λ_k), where Block is one transformer block at H-space
width (pre-norm cross-attention with queries from h_t and keys/values from the k-th
neighbour, then a GEGLU feed-forward with a residual), followed by a zero-initialised
output projection. Zero init makes an untrained adapter exactly the identity; λ_k = 0
(no neighbour, or a score under the minimum) leaves h_t exactly unchanged.
The division by max(1, Σλ) keeps k > 1 neighbours at the weight one neighbour has (λ is a
cosine, so at k = 1 it never divides): without it an adapter trained at k = 1 and run at
k = 4 gets about four times the residual it learned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class _GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)
        self.out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.proj(x).chunk(2, dim=-1)
        return self.out(a * F.gelu(g))


class HAdapter(ModelMixin, ConfigMixin):
    """Cross-attention adapter over H-space features.

    Args:
        channels: H-space width C (1280 for SD 2.1 / SD-Turbo).
        num_heads: attention heads; must divide ``channels``.
        ff_mult: feed-forward expansion.
        norm_eps: LayerNorm epsilon.
        query_gate: give the feed-forward the target's own (normalised) H-tokens too, through a
            zero-initialised per-channel gate: ``y = a + FF(norm(a + g ⊙ norm_q(h_t)))``. Without
            it the block's output is a mix of the neighbour's values alone, so it cannot tell a
            neighbour that agrees with the query from one that does not (the toy world's shuffled-neighbour
            test); ``g = 0`` is exactly the block without it, so an adapter trained without the
            gate loads into one with it unchanged (see ``toyworld.models.variants.load_variant``).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self, channels: int = 1280, num_heads: int = 20, ff_mult: int = 4, norm_eps: float = 1e-5,
        query_gate: bool = False,
    ) -> None:
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"channels={channels} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm_q = nn.LayerNorm(channels, eps=norm_eps)
        self.norm_kv = nn.LayerNorm(channels, eps=norm_eps)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.to_out = nn.Linear(channels, channels)
        self.norm_ff = nn.LayerNorm(channels, eps=norm_eps)
        self.ff = _GEGLU(channels, channels * ff_mult)
        self.q_gate = nn.Parameter(torch.zeros(channels)) if query_gate else None
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, h_tgt: torch.Tensor, h_ret: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """h_tgt (B,C,h,w), h_ret (B,k,C,h',w'), lam (B,k) -> (B,C,h,w)."""
        if h_ret.ndim != 5 or lam.ndim != 2:
            raise ValueError(
                f"expected h_ret (B,k,C,h,w) and lam (B,k); got {tuple(h_ret.shape)}, {tuple(lam.shape)}"
            )
        b, c, hh, ww = h_tgt.shape
        k = h_ret.shape[1]
        if h_ret.shape[0] != b or h_ret.shape[2] != c or lam.shape != (b, k):
            raise ValueError(
                f"shape mismatch: h_tgt {tuple(h_tgt.shape)}, h_ret {tuple(h_ret.shape)}, lam {tuple(lam.shape)}"
            )
        nh = self.num_heads
        hd = c // nh
        tok_t = h_tgt.flatten(2).transpose(1, 2)  # (B, N, C)
        n = tok_t.shape[1]
        tok_r = h_ret.flatten(3).transpose(2, 3).reshape(b * k, -1, c)  # (B*k, M, C)
        qn = self.norm_q(tok_t)  # (B, N, C)
        q = self.to_q(qn)
        q = q.repeat_interleave(k, dim=0)  # (B*k, N, C)
        kv = self.norm_kv(tok_r)
        key = self.to_k(kv)
        val = self.to_v(kv)

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(x.shape[0], x.shape[1], nh, hd).transpose(1, 2)

        a = F.scaled_dot_product_attention(heads(q), heads(key), heads(val))
        a = self.to_out(a.transpose(1, 2).reshape(b * k, n, c))
        ff_in = a if self.q_gate is None else a + self.q_gate * qn.repeat_interleave(k, dim=0)
        y = a + self.ff(self.norm_ff(ff_in))
        y = y.reshape(b, k, n, c)
        lam_y = lam.to(y.dtype)
        lam_y = lam_y / lam_y.sum(1, keepdim=True).clamp(min=1.0)  # Σλ ≤ 1, so k = 1 is unchanged
        mixed = (lam_y[:, :, None, None] * y).sum(1)  # (B, N, C)
        # Σ_k λ_k · proj_out(y_k): the bias is scaled by Σλ too, so λ = 0 is exactly h_t.
        delta = F.linear(mixed, self.proj_out.weight) + lam_y.sum(1)[:, None, None] * self.proj_out.bias
        return h_tgt + delta.transpose(1, 2).reshape(b, c, hh, ww)
