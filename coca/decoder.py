"""The multimodal decoder, and `FullPrefixDecoder`: token-by-token decoding without any cache.

`FullPrefixDecoder` re-runs the text tower and the decoder on the whole prefix every step, as
open_clip's generate does: it is the slow reference that coca.incremental.CachedDecoder (the fast,
KV-cached implementation of the same coca.decoding protocol) is tested against.

Legend: B rows (hypotheses), I images, T tokens, N image tokens, D width, H heads, Dh head width,
V vocabulary, Lyr layers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from coca.config import CocaConfig
from coca.layers import CrossBlock, LayerNorm, ResidualBlock
from coca.text import TextTransformer


class MultimodalDecoder(nn.Module):
    """Key layout follows open_clip's `text_decoder.*` (resblocks, cross_attn, ln_final,
    text_projection)."""

    def __init__(self, config: CocaConfig) -> None:
        super().__init__()
        d = config.decoder
        self.context_length = d.context_length
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(
            ResidualBlock(d.width, d.heads, d.mlp_ratio, config.quick_gelu) for _ in range(d.layers)
        )
        self.cross_attn = nn.ModuleList(
            CrossBlock(d.width, d.heads, d.mlp_ratio, config.quick_gelu) for _ in range(d.layers)
        )
        self.ln_final = LayerNorm(d.width)
        self.text_projection = nn.Parameter(torch.empty(d.width, config.vocab_size))
        self._init_weights(d.width, d.layers)

    def _init_weights(self, width: int, layers: int) -> None:
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        for block in [*self.resblocks, *self.cross_attn]:
            nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., V)."""
        return self.ln_final(x) @ self.text_projection

    def forward(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        """image_tokens (B, N, D), text_tokens (B, T, D) -> logits (B, T, V), causal over T."""
        x = text_tokens
        for self_block, cross_block in zip(self.resblocks, self.cross_attn, strict=True):
            if self.grad_checkpointing and self.training:
                x = checkpoint(self_block, x, None, True, use_reentrant=False)
                x = checkpoint(cross_block, x, image_tokens, use_reentrant=False)
            else:
                x = self_block(x, is_causal=True)
                x = cross_block(x, image_tokens)
        return self.logits(x)


def check_rows(rows: torch.Tensor, batch: int) -> torch.Tensor:
    """rows as a CPU long tensor; a CPU input avoids a device sync."""
    if rows.ndim != 1:
        raise ValueError(
            f"reorder expects a 1-D tensor of row indices, got shape {tuple(rows.shape)}"
        )
    rows = rows.to("cpu", torch.long)
    low, high = (int(rows.min()), int(rows.max())) if rows.numel() else (0, 0)
    if rows.numel() and (low < 0 or high >= batch):
        raise ValueError(f"reorder row indices must lie in [0, {batch}), got {low}..{high}")
    return rows


class FullPrefixDecoder:
    """IncrementalDecoder without any cache: every step re-encodes the whole prefix with the text
    tower (cls slot included, as in training) and runs the decoder over all positions, like
    open_clip's generate. Slow by design; the reference for tests."""

    def __init__(
        self, text: TextTransformer, decoder: MultimodalDecoder, image_tokens: torch.Tensor
    ) -> None:
        self.text, self.decoder = text, decoder
        self.image_tokens = image_tokens  # (I, N, D)
        self.tokens = torch.empty(
            image_tokens.shape[0], 0, dtype=torch.long, device=image_tokens.device
        )
        self.row_image = torch.arange(image_tokens.shape[0], device=image_tokens.device)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[0] != self.tokens.shape[0]:
            raise ValueError(
                f"step got {tokens.shape[0]} rows but the decoder holds {self.tokens.shape[0]}"
            )
        if self.tokens.shape[1] + tokens.shape[1] > self.text.context_length:
            raise ValueError(f"the prefix would exceed context_length={self.text.context_length}")
        self.tokens = torch.cat([self.tokens, tokens], dim=1)  # (B, T)
        _, token_outputs = self.text(self.tokens)  # (B, T, D)
        logits = self.decoder(self.image_tokens[self.row_image], token_outputs)  # (B, T, V)
        return logits[:, -1]

    def reorder(self, rows: torch.Tensor) -> None:
        rows = check_rows(rows, self.tokens.shape[0]).to(self.tokens.device)
        self.tokens = self.tokens[rows]
        self.row_image = self.row_image[rows]
