"""The multimodal decoder, and the two ways to run it token by token (coca.decoding protocol).

`CachedDecoder` keeps per-layer key/value caches for the text tower and the decoder's
self-attention, computes each image's cross-attention keys/values once, and returns logits for the
last position only. `FullPrefixDecoder` re-runs everything on the whole prefix every step, as
open_clip's generate does: it is the slow reference the cached path is tested against.

Legend: B rows (hypotheses), I images, T tokens, N image tokens, D width, H heads, Dh head width,
V vocabulary, Lyr layers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from coca.config import CocaConfig
from coca.layers import CrossBlock, LayerNorm, ResidualBlock
from coca.text import TextTransformer, causal_mask, legacy_key_mask


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


def _check_rows(rows: torch.Tensor, batch: int) -> torch.Tensor:
    """rows as a CPU long tensor; a CPU input avoids a device sync."""
    if rows.ndim != 1:
        raise ValueError(
            f"reorder expects a 1-D tensor of row indices, got shape {tuple(rows.shape)}"
        )
    rows = rows.to("cpu", torch.long)
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= batch):
        raise ValueError(f"reorder row indices must lie in [0, {batch}), got {rows.tolist()}")
    return rows


class CachedDecoder:
    """IncrementalDecoder with preallocated KV caches; see the module docstring."""

    def __init__(
        self,
        text: TextTransformer,
        decoder: MultimodalDecoder,
        image_tokens: torch.Tensor,
        max_len: int,
    ) -> None:
        self.text, self.decoder = text, decoder
        self.max_len = max_len
        self.length = 0  # tokens fed so far (the filled prefix of every cache)
        images = image_tokens.shape[0]
        self.batch = images
        device, dtype = image_tokens.device, decoder.text_projection.dtype
        self._dtype = dtype
        self._text_kv = self._alloc(text.transformer.resblocks, images, device, dtype)
        self._dec_kv = self._alloc(decoder.resblocks, images, device, dtype)
        self._key_valid = torch.ones(images, max_len, dtype=torch.bool, device=device)
        self._last_token = torch.zeros(images, dtype=torch.long, device=device)
        # Cross-attention keys/values once per image and layer, never per row: (I, H, N, Dh) each.
        with torch.no_grad():
            self._cross_kv = [block.image_kv(image_tokens) for block in decoder.cross_attn]
        self._row_image = torch.arange(images)  # CPU: which image each row decodes
        self._rows_per_image: int | None = 1  # rows grouped by image, or None -> gather per row
        self._row_image_device = self._row_image.to(device)

    def _alloc(
        self, blocks: nn.ModuleList, rows: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """Keys and values of every layer in one buffer (2, Lyr, B, H, T_max, Dh)."""
        attn = blocks[0].attn
        heads, width = attn.heads, attn.out_proj.in_features
        shape = (2, len(blocks), rows, heads, self.max_len, width // heads)
        return torch.empty(shape, device=device, dtype=dtype)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed tokens (B, T_new); logits for the last position (B, V)."""
        rows, n = tokens.shape
        if rows != self.batch:
            raise ValueError(f"step got {rows} rows but the decoder holds {self.batch}")
        start, end = self.length, self.length + n
        if rows == 0:  # every row was dropped; keep the protocol's shapes
            self.length = end
            return tokens.new_zeros((0, self.decoder.text_projection.shape[1]), dtype=self._dtype)
        if end > self.max_len:
            raise ValueError(f"sequence would reach {end} tokens, past max_len={self.max_len}")
        previous = self._last_token[:rows] if start else None
        self._key_valid[:rows, start:end] = legacy_key_mask(tokens, self.text.pad_id, previous)
        text_mask = causal_mask(self._key_valid[:rows, :end], n)  # (B, 1, T_new, end)
        x = self.text.embed(tokens, start)  # (B, T_new, D)
        for i, block in enumerate(self.text.transformer.resblocks):
            k, v = self._text_kv[0, i, :rows], self._text_kv[1, i, :rows]
            x = block.forward_cached(x, k, v, start, text_mask)
        # One new token attends to the whole prefix: no mask needed. A longer prompt is causal.
        all_valid = torch.ones(1, end, dtype=torch.bool, device=tokens.device)
        dec_mask = None if n == 1 else causal_mask(all_valid, n)  # (1, 1, T_new, end)
        for i, (self_block, cross_block) in enumerate(
            zip(self.decoder.resblocks, self.decoder.cross_attn, strict=True)
        ):
            k, v = self._dec_kv[0, i, :rows], self._dec_kv[1, i, :rows]
            x = self_block.forward_cached(x, k, v, start, dec_mask)
            x = self._cross_attend(cross_block, x, i)
        self._last_token[:rows] = tokens[:, -1]
        self.length = end
        return self.decoder.logits(x[:, -1])  # (B, V)

    def _cross_attend(self, block: CrossBlock, x: torch.Tensor, layer: int) -> torch.Tensor:
        k, v = self._cross_kv[layer]
        if self._rows_per_image is not None:
            return block.forward_with_kv(x, k, v, self._rows_per_image)
        idx = self._row_image_device  # rows out of image order: gather a copy per row (rare)
        return block.forward_with_kv(x, k[idx], v[idx], rows_per_image=1)

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i becomes old row rows[i] (keep, drop, duplicate); only the filled prefix moves."""
        rows_cpu = _check_rows(rows, self.batch)
        new_batch = rows_cpu.numel()
        if new_batch == self.batch and torch.equal(rows_cpu, torch.arange(new_batch)):
            return
        device = self._key_valid.device
        index = rows_cpu.to(device, non_blocking=True)
        t = self.length
        if new_batch > self._key_valid.shape[0]:
            self._text_kv = self._gather_into_new(self._text_kv, index)
            self._dec_kv = self._gather_into_new(self._dec_kv, index)
            self._key_valid = self._key_valid[index]  # advanced indexing: a new buffer
            self._last_token = self._last_token[index]
        else:
            # Gather first (advanced indexing copies), then write into the same buffers.
            self._text_kv[:, :, :new_batch, :, :t] = self._text_kv[:, :, index, :, :t]
            self._dec_kv[:, :, :new_batch, :, :t] = self._dec_kv[:, :, index, :, :t]
            self._key_valid[:new_batch, :t] = self._key_valid[index, :t]
            self._last_token[:new_batch] = self._last_token[index]
        self.batch = new_batch
        self._set_layout(self._row_image[rows_cpu])

    def _gather_into_new(self, buffer: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        shape = list(buffer.shape)
        shape[2] = index.numel()
        grown = buffer.new_empty(shape)
        grown[:, :, :, :, : self.length] = buffer[:, :, index, :, : self.length]
        return grown

    def _set_layout(self, row_image: torch.Tensor) -> None:
        """Pick how cross-attention finds each row's image (row_image: CPU (B,)).

        If the rows form equal-length consecutive runs, one run per image (beam search, and
        batched decoding after finished images are dropped), the cross K/V are put in run order
        once and each run folds into the query axis: no per-row copy. Otherwise (rare) K/V are
        gathered per row at every step.
        """
        images, counts = torch.unique_consecutive(row_image, return_counts=True)
        runs_ok = images.numel() > 0 and bool((counts == counts[0]).all())
        runs_ok = runs_ok and torch.unique(images).numel() == images.numel()
        if runs_ok:
            order = images
            row_image = torch.arange(images.numel()).repeat_interleave(counts)
        else:
            order = torch.unique(row_image)  # sorted images still decoded: drop the others
            row_image = torch.searchsorted(order, row_image)
        if not torch.equal(order, torch.arange(self._cross_kv[0][0].shape[0])):
            index = order.to(self._key_valid.device)
            self._cross_kv = [(k[index], v[index]) for k, v in self._cross_kv]
        self._row_image = row_image
        self._rows_per_image = int(counts[0]) if runs_ok else None
        self._row_image_device = row_image.to(self._key_valid.device)


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
        self.tokens = torch.cat([self.tokens, tokens], dim=1)  # (B, T)
        _, token_outputs = self.text(self.tokens)  # (B, T, D)
        logits = self.decoder(self.image_tokens[self.row_image], token_outputs)  # (B, T, V)
        return logits[:, -1]

    def reorder(self, rows: torch.Tensor) -> None:
        rows = _check_rows(rows, self.tokens.shape[0]).to(self.tokens.device)
        self.tokens = self.tokens[rows]
        self.row_image = self.row_image[rows]
