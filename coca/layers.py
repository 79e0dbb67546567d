"""Building blocks shared by the towers: LayerNorm, MLP, attention, pre-LN residual blocks.

Attribute names here ARE checkpoint key names (ln_1, attn.in_proj_weight, mlp.c_fc, ...): they
follow open_clip's `ResidualAttentionBlock` / `nn.MultiheadAttention` layout, so its state dicts
load unchanged.

Legend: B batch (rows), T query tokens, S key tokens, D width, H heads, Dh head width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back, so fp16/bf16 models normalise like open_clip's
    LayerNormFp32 (in fp32 models this is exactly torch's LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype:
            # torch's kernels accumulate fp16/bf16 statistics in fp32 and apply the affine in fp32
            # before rounding once: casting first gives the same up to rounding, in 4 more kernels.
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        weight, bias = self.weight.float(), self.bias.float()
        y = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return y.to(x.dtype)


class QuickGELU(nn.Module):
    """OpenAI CLIP's sigmoid approximation of GELU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Mlp(nn.Module):
    """c_fc -> GELU -> c_proj (key names from open_clip's nn.Sequential)."""

    def __init__(self, width: int, mlp_ratio: float, quick_gelu: bool) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = QuickGELU() if quick_gelu else nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, D) -> (B, H, T, Dh)."""
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, Dh) -> (B, T, D)."""
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)


class Attention(nn.Module):
    """Multi-head attention with nn.MultiheadAttention's packed parameters: q, k, v are the three
    row blocks of `in_proj_weight` (3D, D). The math runs through F.scaled_dot_product_attention."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention projections of x (B, T, D), each (B, H, T, Dh)."""
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, T, 3D)
        q, k, v = qkv.chunk(3, dim=-1)
        return split_heads(q, self.heads), split_heads(k, self.heads), split_heads(v, self.heads)

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        q = F.linear(x, self.in_proj_weight[:d], self.in_proj_bias[:d])  # (B, T, D)
        return split_heads(q, self.heads)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Key/value projections of a context (B, S, D), each (B, H, S, Dh)."""
        d = x.shape[-1]
        kv = F.linear(x, self.in_proj_weight[d:], self.in_proj_bias[d:])  # (B, S, 2D)
        k, v = kv.chunk(2, dim=-1)
        return split_heads(k, self.heads), split_heads(v, self.heads)

    def output(self, attended: torch.Tensor) -> torch.Tensor:
        """(B, H, T, Dh) -> out_proj (B, T, D)."""
        return self.out_proj(merge_heads(attended))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Self-attention over x (B, T, D); mask is boolean (True = may attend), broadcastable to
        (B, H, T, T)."""
        q, k, v = self.project_qkv(x)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        return self.output(out)


class ResidualBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1 x), then x + mlp(ln_2 x)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, quick_gelu: bool) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = Mlp(width, mlp_ratio, quick_gelu)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask=mask, is_causal=is_causal)
        return x + self.mlp(self.ln_2(x))

    def forward_cached(
        self,
        x: torch.Tensor,
        kv_cache: torch.Tensor,
        position: int | torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Run new tokens x (B, T, D) with this layer's key/value cache (2, B, H, T_max, Dh).

        position int: the tokens sit at position.., their keys/values are written there and the
        filled prefix is attended under the boolean `mask` (SDPA). position tensor (1,) on the
        device (one token, no host sync, CUDA-graph safe): keys and values are written with one
        index_copy_, all T_max slots are attended, and `mask` is an additive bias
        (see `attend_few`) that must hide the unfilled slots.
        """
        attn = self.attn
        b, t, d = x.shape
        qkv = F.linear(self.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # (B, T, 3D)
        qkv = qkv.view(b, t, 3, attn.heads, d // attn.heads)
        q = qkv[:, :, 0].transpose(1, 2)  # (B, H, T, Dh)
        kv = qkv[:, :, 1:].permute(2, 0, 3, 1, 4).to(kv_cache.dtype)  # (2, B, H, T, Dh)
        if isinstance(position, int):
            end = position + t
            kv_cache[:, :, :, position:end] = kv
            k, v = kv_cache[0, :, :, :end], kv_cache[1, :, :, :end]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            kv_cache.index_copy_(3, position, kv)
            out = attend_few(q, kv_cache[0], kv_cache[1], mask)
        x = x + attn.output(out)
        return x + self.mlp(self.ln_2(x))


def attend_few(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Softmax attention for a few queries per (row, head), as batched matrix products.

    q (B, H, T, Dh); k, v (B, H, S, Dh) with the (B, H) axes mergeable without a copy (a cache
    slice or contiguous); bias None or additive float (B*H or 1, T or 1, S), 0 or -inf.
    One-token decoding has T = 1 (or a few beams folded into T): SDPA's fused kernels tile 32-128
    queries, so most of their work would be padding, and a masked call adds mask conversion
    kernels at every layer. Here: scaled scores + bias in one baddbmm, a softmax, one bmm.
    """
    b, h, t, dh = q.shape
    s = k.shape[2]
    q3 = q.reshape(b * h, t, dh)
    k3, v3 = k.reshape(b * h, s, dh), v.reshape(b * h, s, dh)
    scale = dh**-0.5
    if bias is None:
        scores = torch.bmm(q3, k3.transpose(1, 2)).mul_(scale)  # (B*H, T, S)
    else:
        scores = torch.baddbmm(bias.to(q3.dtype), q3, k3.transpose(1, 2), alpha=scale)
    probs = scores.softmax(dim=-1).to(v3.dtype)
    return torch.bmm(probs, v3).view(b, h, t, dh)


def attention_bias(valid: torch.Tensor, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive bias for `attend_few` from key validity (B, S) bool: (B*H, 1, S), 0 or -inf."""
    b, s = valid.shape
    bias = torch.zeros(b, heads, 1, s, dtype=dtype, device=valid.device)
    bias.masked_fill_(~valid.view(b, 1, 1, s), -float("inf"))
    return bias.view(b * heads, 1, s)


class CrossBlock(nn.Module):
    """Pre-LN cross-attention: queries from the text, keys/values from ln_1_kv(image tokens)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, quick_gelu: bool) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_1_kv = LayerNorm(width)
        self.ln_2 = LayerNorm(width)
        self.mlp = Mlp(width, mlp_ratio, quick_gelu)

    def image_kv(self, image_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of the image tokens (B_img, N, D), each (B_img, H, N, Dh): computed once per
        image when decoding."""
        return self.attn.project_kv(self.ln_1_kv(image_tokens))

    def forward(self, x: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        k, v = self.image_kv(image_tokens)
        return self.forward_with_kv(x, k, v, rows_per_image=1)

    def forward_with_kv(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rows_per_image: int,
        few_queries: bool = False,
    ) -> torch.Tensor:
        """x (B, T, D) with rows grouped by image, `rows_per_image` consecutive rows per image;
        k, v (B // rows_per_image, H, N, Dh). The rows of one image are folded into the query axis,
        so all beams of an image read one copy of its keys/values. `few_queries` (one-token
        decoding; k, v contiguous) uses `attend_few` instead of SDPA."""
        q = self.attn.project_q(self.ln_1(x))  # (B, H, T, Dh)
        b, h, t, dh = q.shape
        r = rows_per_image
        if r > 1:
            q = q.view(b // r, r, h, t, dh).transpose(1, 2).reshape(b // r, h, r * t, dh)
        if few_queries:
            out = attend_few(q, k, v, None)  # (B/r, H, r*T, Dh)
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # (B/r, H, r*T, Dh)
        if r > 1:
            out = out.view(b // r, h, r, t, dh).transpose(1, 2).reshape(b, h, t, dh)
        x = x + self.attn.output(out)
        return x + self.mlp(self.ln_2(x))
