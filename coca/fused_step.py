"""The one-token decoding step as one pure function, so torch.compile can fuse it.

CachedDecoder's eager one-token step writes every layer's new key/value into its cache before
attending: a mutation per layer, ~25 small kernels per block, ~600 per step for coca_ViT-B-32.
Here the step only READS the caches. Each self-attention layer scores the query against the
cached slots (the current slot hidden) and against its own new key separately, takes one
softmax over both, and returns the new keys/values of every layer; the caller writes them with
one index_copy_ per cache. With no mutation inside, torch.compile (Inductor) can fuse the
LayerNorms, bias adds, GELUs, residual adds, softmaxes and head reshapes into far fewer
kernels, and the compiled step is still captured in CachedDecoder's CUDA graph.

Legend: B rows, H heads, T T_max cache slots, Dh head width, D width, Lyr layers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from coca.decoder import MultimodalDecoder
from coca.layers import ResidualBlock, attention_bias
from coca.text import TextTransformer

StepOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def one_token_step(
    text: TextTransformer,
    decoder: MultimodalDecoder,
    tokens: torch.Tensor,
    position: torch.Tensor,
    text_valid: torch.Tensor,
    text_kv: torch.Tensor,
    dec_kv: torch.Tensor,
    cross_kv: Sequence[tuple[torch.Tensor, torch.Tensor]],
    rows_per_image: int,
) -> StepOutputs:
    """Logits for one new token per row, and the keys/values to cache.

    tokens (B, 1); position (1,) long: the slot the token fills; text_valid (B, T + 1) bool: may
    the token attend to each cached slot (filled and unmasked) and, last, to itself (open_clip's
    legacy pad mask); text_kv/dec_kv (2, Lyr, B, H, T, Dh) read-only caches; cross_kv per decoder
    layer (I, H, N, Dh) keys and values, rows_per_image consecutive rows per image.
    Returns logits (B, V) and the new text/decoder keys/values, each (2, Lyr, B, H, 1, Dh) in the
    caches' dtype.
    """
    cache_dtype = text_kv.dtype
    slots = torch.arange(text_kv.shape[4], device=tokens.device)
    filled = torch.cat([slots < position, slots.new_ones(1, dtype=torch.bool)])  # (T + 1,)
    # One head's worth of bias, (B, 1, T + 1): it broadcasts over the heads' scores.
    text_bias = attention_bias(text_valid & filled, 1, cache_dtype)  # (B, 1, T + 1)
    dec_bias = attention_bias(filled.view(1, -1), 1, cache_dtype)  # (1, 1, T + 1)
    emb = text.token_embedding(tokens).to(text.positional_embedding.dtype)  # (B, 1, D)
    x = emb + text.positional_embedding.index_select(0, position)
    new_text = []
    for i, block in enumerate(text.transformer.resblocks):
        x, kv = _self_attend(block, x, text_kv[:, i], text_bias)
        new_text.append(kv)
    new_dec = []
    pairs = zip(decoder.resblocks, decoder.cross_attn, strict=True)
    for i, (self_block, cross_block) in enumerate(pairs):
        x, kv = _self_attend(self_block, x, dec_kv[:, i], dec_bias)
        new_dec.append(kv)
        k, v = cross_kv[i]
        x = cross_block.forward_with_kv(x, k, v, rows_per_image, few_queries=True)
    logits = decoder.logits(x[:, -1])  # (B, V)
    return logits, torch.stack(new_text, 1).unsqueeze(4), torch.stack(new_dec, 1).unsqueeze(4)


def _self_attend(
    block: ResidualBlock, x: torch.Tensor, kv_cache: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pre-LN self-attention block for one token per row, without touching the cache.

    x (B, 1, D); kv_cache (2, B, H, T, Dh); bias (B or 1, 1, T + 1), its last column for the
    token's own key. Returns the block's output (B, 1, D) and the new key/value (2, B, H, Dh).
    """
    attn = block.attn
    b, _, d = x.shape
    heads = attn.heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # (B, 1, 3D)
    qkv = qkv.view(b, 3, heads, d // heads)
    # Rounded to the cache's dtype as the eager path caches them before attending to them.
    new_kv = qkv[:, 1:].to(kv_cache.dtype).transpose(0, 1)  # (2, B, H, Dh)
    q = qkv[:, 0].to(kv_cache.dtype)  # (B, H, Dh)
    keys, values = kv_cache[0], kv_cache[1]  # (B, H, T, Dh)
    scale = (d // heads) ** -0.5
    cached = torch.einsum("bhd,bhtd->bht", q, keys)  # (B, H, T)
    own = (q * new_kv[0]).sum(-1, keepdim=True)  # (B, H, 1)
    scores = torch.cat([cached, own], dim=-1) * scale + bias  # (B, H, T + 1)
    probs = scores.softmax(dim=-1)
    out = torch.einsum("bht,bhtd->bhd", probs[..., :-1], values)  # (B, H, Dh)
    out = out + probs[..., -1:] * new_kv[1]
    x = x + attn.out_proj(out.reshape(b, 1, d))
    return x + block.mlp(block.ln_2(x)), new_kv


StepFunction = Callable[..., StepOutputs]


@functools.cache
def compiled_one_token_step(backend: str = "inductor") -> StepFunction:
    """one_token_step under torch.compile, made once per process and backend.

    Shapes start static; when the row count changes (greedy decoding drops finished rows),
    torch.compile's automatic dynamic shapes recompiles once with a symbolic row count. The first
    call per model, dtype and search compiles (tens of seconds on a GPU), so this pays off when
    decoding many batches (indexing), not for one caption.
    """
    return torch.compile(one_token_step, backend=backend, fullgraph=True)
