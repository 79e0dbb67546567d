"""A lean one-token decoding step for float32 models on the CPU.

On a CPU a one-token step of a small model is bound by two things, neither of them arithmetic:
- Reading the weights. Every step streams all text and decoder weights (15 MB for the default
  model) from memory. BLAS reads a (K, N) weight for `x @ W` faster than the (N, K) one that
  `F.linear` uses (x @ W.T), about 1.7x on the 2-core development CPU, so `HostWeights` keeps a
  transposed, contiguous copy of every decoding weight, made once per model and reused. Weights
  that float16 holds exactly (bundles saved in float16, like the default model) are kept in
  float16 and widened into a small per-thread buffer before each product: half the bytes from
  memory, and the same float32 arithmetic, bit for bit.
- Operator dispatch: ~5-10 us per PyTorch op at batch 1. The step below calls the kernels
  directly (F.layer_norm, addmm, bmm, softmax) on 2-D activations with Python-int positions and
  skips the fixed-shape machinery (position tensors, masks over all slots, index_copy_) that only
  CUDA graphs need: ~14 ops per block instead of ~30.

It reads and writes CachedDecoder's caches in their usual layout, so reorder, beam following and
the prompt path are shared. The arithmetic is the eager step's; only BLAS's summation order
differs, so logits agree to float rounding (tests compare the decoded tokens).

Legend: B rows, I images, r rows per image, H heads, Dh head width, D width, S filled slots,
N image tokens, V vocabulary.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from coca.decoder import MultimodalDecoder
from coca.layers import CrossBlock, QuickGELU, ResidualBlock
from coca.text import TextTransformer


@dataclass(frozen=True)
class BlockWeights:
    """One pre-LN block's parameters, projections transposed to (in, out)."""

    ln_1: tuple[torch.Tensor, torch.Tensor, float]  # weight, bias, eps
    in_proj: torch.Tensor  # (D, 3D) self-attention q|k|v, or (D, D) cross-attention q
    in_bias: torch.Tensor  # (3D,) or (D,)
    out_proj: torch.Tensor  # (D, D)
    out_bias: torch.Tensor  # (D,)
    ln_2: tuple[torch.Tensor, torch.Tensor, float]
    fc: torch.Tensor  # (D, 4D)
    fc_bias: torch.Tensor
    proj: torch.Tensor  # (4D, D)
    proj_bias: torch.Tensor
    heads: int
    quick_gelu: bool


@dataclass(frozen=True)
class HostWeights:
    """Every weight a one-token step reads, for one (text tower, decoder) pair."""

    text_blocks: tuple[BlockWeights, ...]
    self_blocks: tuple[BlockWeights, ...]
    cross_blocks: tuple[BlockWeights, ...]
    token_embedding: torch.Tensor  # (V_text, D)
    positional_embedding: torch.Tensor  # (T_ctx + 1, D)
    ln_final: tuple[torch.Tensor, torch.Tensor, float]
    text_projection: torch.Tensor  # (D, V)


def supports(decoder: MultimodalDecoder, device: torch.device) -> bool:
    """Whether the lean step applies: float32 weights on the CPU, outside autocast."""
    return (
        device.type == "cpu"
        and decoder.text_projection.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


# Packed weights per text tower, with the identity (address, version) of every parameter they
# copy: training steps and load_state_dict bump versions, .to() changes addresses.
_PACKED: weakref.WeakKeyDictionary[nn.Module, tuple[list[tuple[int, int]], HostWeights]] = (
    weakref.WeakKeyDictionary()
)


def host_weights(text: TextTransformer, decoder: MultimodalDecoder) -> HostWeights:
    """The packed weights of text + decoder, rebuilt only when a parameter changed."""
    params = [*text.parameters(), *decoder.parameters()]
    stamp = [(p.data_ptr(), p._version) for p in params]
    cached = _PACKED.get(decoder)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    weights = _pack(text, decoder)
    _PACKED[decoder] = (stamp, weights)
    return weights


def _layer_norm(ln: nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor, float]:
    return ln.weight.detach(), ln.bias.detach(), ln.eps


def _transposed(weight: torch.Tensor) -> torch.Tensor:
    """(out, in) -> (in, out) contiguous; float16 when that is exact (half the bytes to read)."""
    t = weight.detach().t().contiguous()
    half = t.to(torch.float16)
    return half if torch.equal(half.float(), t) else t


_SCRATCH = threading.local()
_ZERO = torch.zeros(())  # read-only placeholder for baddbmm(beta=0)


def _matmul(bias: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """bias + x @ weight in float32; a float16 weight is widened (exactly) into a per-thread
    buffer that stays in cache, so memory is read at 2 bytes per weight instead of 4."""
    if weight.dtype == torch.float16:
        buffers = _SCRATCH.__dict__.setdefault("buffers", {})
        buf = buffers.get(weight.shape)
        if buf is None:  # a normal tensor even under inference_mode, so later calls may write it
            with torch.inference_mode(False):
                buf = buffers[weight.shape] = torch.empty(weight.shape)
        weight = buf.copy_(weight)
    return torch.addmm(bias, x, weight)


def _pack_block(block: ResidualBlock | CrossBlock, cross: bool) -> BlockWeights:
    attn = block.attn
    width = attn.out_proj.in_features
    in_proj, in_bias = attn.in_proj_weight.detach(), attn.in_proj_bias.detach()
    if cross:  # keys/values of the image are computed once per image, elsewhere
        in_proj, in_bias = in_proj[:width], in_bias[:width]
    return BlockWeights(
        ln_1=_layer_norm(block.ln_1),
        in_proj=_transposed(in_proj),
        in_bias=in_bias.contiguous(),
        out_proj=_transposed(attn.out_proj.weight),
        out_bias=attn.out_proj.bias.detach(),
        ln_2=_layer_norm(block.ln_2),
        fc=_transposed(block.mlp.c_fc.weight),
        fc_bias=block.mlp.c_fc.bias.detach(),
        proj=_transposed(block.mlp.c_proj.weight),
        proj_bias=block.mlp.c_proj.bias.detach(),
        heads=attn.heads,
        quick_gelu=isinstance(block.mlp.gelu, QuickGELU),
    )


def _pack(text: TextTransformer, decoder: MultimodalDecoder) -> HostWeights:
    with torch.no_grad():
        return HostWeights(
            text_blocks=tuple(_pack_block(b, False) for b in text.transformer.resblocks),
            self_blocks=tuple(_pack_block(b, False) for b in decoder.resblocks),
            cross_blocks=tuple(_pack_block(b, True) for b in decoder.cross_attn),
            token_embedding=text.token_embedding.weight.detach(),
            positional_embedding=text.positional_embedding.detach(),
            ln_final=_layer_norm(decoder.ln_final),
            text_projection=decoder.text_projection.detach(),
        )


def _norm(x: torch.Tensor, ln: tuple[torch.Tensor, torch.Tensor, float]) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), ln[0], ln[1], ln[2])


def _mlp_residual(x: torch.Tensor, w: BlockWeights) -> torch.Tensor:
    """x + mlp(ln_2 x) for x (B, D)."""
    h = _matmul(w.fc_bias, _norm(x, w.ln_2), w.fc)  # (B, 4D)
    h = h * torch.sigmoid(1.702 * h) if w.quick_gelu else F.gelu(h)
    return x + _matmul(w.proj_bias, h, w.proj)


@dataclass(frozen=True)
class LayerCache:
    """Views of one layer's slice of CachedDecoder's (2, Lyr, B, H, T_max, Dh) cache, made once
    per batch shape instead of at every step."""

    kv: torch.Tensor  # (2, B, H, T_max, Dh): a new token's key and value are written here
    keys: torch.Tensor  # (B*H, T_max, Dh), the same memory
    values: torch.Tensor  # (B*H, T_max, Dh)


def layer_caches(buffer: torch.Tensor, rows: int) -> tuple[LayerCache, ...]:
    """Per-layer views of the first `rows` rows of a (2, Lyr, B_alloc, H, T_max, Dh) buffer."""
    caches = []
    for layer in range(buffer.shape[1]):
        kv = buffer[:, layer, :rows]
        _, b, h, t, dh = kv.shape
        caches.append(LayerCache(kv, kv[0].view(b * h, t, dh), kv[1].view(b * h, t, dh)))
    return tuple(caches)


def self_attend(
    x: torch.Tensor,
    w: BlockWeights,
    cache: LayerCache,
    slot: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """One token per row through a self-attention block: x (B, D) -> (B, D).

    The token's key/value are written at `slot`, then slots 0..slot are attended; bias None (all
    valid) or additive (B*H, 1, slot + 1).
    """
    b, d = x.shape
    h, dh = w.heads, d // w.heads
    qkv = _matmul(w.in_bias, _norm(x, w.ln_1), w.in_proj)  # (B, 3D)
    cache.kv[:, :, :, slot].copy_(qkv[:, d:].view(b, 2, h, dh).transpose(0, 1))
    q = qkv[:, :d].reshape(b * h, 1, dh)  # (B*H, 1, Dh)
    end = slot + 1
    out = _attend(q, cache.keys[:, :end], cache.values[:, :end], bias, dh**-0.5)  # (B*H, 1, Dh)
    x = x + _matmul(w.out_bias, out.view(b, d), w.out_proj)
    return _mlp_residual(x, w)


def cross_attend(
    x: torch.Tensor, w: BlockWeights, keys: torch.Tensor, values: torch.Tensor, rows_per_image: int
) -> torch.Tensor:
    """x (B, D), rows grouped by image; keys/values (I, H, N, Dh) contiguous, I = B / r."""
    b, d = x.shape
    h, dh, r = w.heads, d // w.heads, rows_per_image
    q = _matmul(w.in_bias, _norm(x, w.ln_1), w.in_proj)  # (B, D)
    if r > 1:  # the r rows of an image become r queries against one copy of its keys/values
        q = q.view(b // r, r, h, dh).transpose(1, 2)  # (I, H, r, Dh)
    q = q.reshape(-1, r, dh)  # (I*H, r, Dh)
    n = keys.shape[2]
    out = _attend(q, keys.view(-1, n, dh), values.view(-1, n, dh), None, dh**-0.5)
    if r > 1:
        out = out.view(b // r, h, r, dh).transpose(1, 2)  # (I, r, H, Dh)
    x = x + _matmul(w.out_bias, out.reshape(b, d), w.out_proj)
    return _mlp_residual(x, w)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v for q (G, Tq, Dh), k, v (G, S, Dh) -> (G, Tq, Dh)."""
    # beta=0: the bias-free case ignores _ZERO's value (one kernel instead of bmm + mul_).
    beta = 0.0 if bias is None else 1.0
    bias = _ZERO if bias is None else bias
    scores = torch.baddbmm(bias, q, k.transpose(1, 2), beta=beta, alpha=scale)  # (G, Tq, S)
    return torch.bmm(scores.softmax(dim=-1), v)


def logits(x: torch.Tensor, w: HostWeights) -> torch.Tensor:
    """(B, D) -> (B, V)."""
    return _norm(x, w.ln_final) @ w.text_projection


def one_token_logits(
    w: HostWeights,
    ids: torch.Tensor,
    slot: int,
    text_bias: torch.Tensor | None,
    text_caches: Sequence[LayerCache],
    dec_caches: Sequence[LayerCache],
    cross_kv: Sequence[tuple[torch.Tensor, torch.Tensor]],
    rows_per_image: int,
) -> torch.Tensor:
    """Next-token logits (B, V) for token ids (B,) at position `slot`; writes their keys/values.

    text_bias: None or the text tower's pad mask (B*H, 1, slot + 1); cross_kv per decoder layer
    (I, H, N, Dh) keys and values, rows_per_image consecutive rows per image.
    """
    x = F.embedding(ids, w.token_embedding) + w.positional_embedding[slot]  # (B, D)
    for block, cache in zip(w.text_blocks, text_caches, strict=True):
        x = self_attend(x, block, cache, slot, text_bias)
    layers = zip(w.self_blocks, w.cross_blocks, dec_caches, cross_kv, strict=True)
    for self_block, cross_block, cache, (keys, values) in layers:
        x = self_attend(x, self_block, cache, slot, None)
        x = cross_attend(x, cross_block, keys, values, rows_per_image)
    return logits(x, w)
