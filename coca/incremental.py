"""KV-cached token-by-token decoding (the coca.decoding.IncrementalDecoder protocol).

What makes it fast, and why:
- Text-tower and decoder self-attention keys/values live in preallocated (B, H, T_max, Dh)
  buffers; a step computes only the new token and writes its keys/values in place.
- Cross-attention keys/values of the image tokens are computed once per image and layer. Rows of
  one image (beams) that sit in consecutive equal runs are folded into the query axis, so every
  beam reads a single copy; nothing is replicated per beam.
- Logits are computed for the last position only.
- One-token steps use a fixed-shape path (position on the device, all T_max slots attended under a
  mask), so on CUDA each step is captured once as a CUDA graph per batch shape and replayed: a step
  of a few hundred small kernels costs one launch instead of hundreds (coca.step_graphs). reset()
  starts a new batch of the same shape in the same buffers, so the graphs outlive the batch.
  On the CPU (float32), one-token steps go through coca.cpu_step instead (cached transposed
  weights, far fewer ops).

Legend: B rows (hypotheses), I images, T tokens, N image tokens, D width, H heads, Dh head width,
V vocabulary, Lyr layers.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from coca import cpu_step
from coca.decoder import MultimodalDecoder, check_rows
from coca.fused_step import StepFunction
from coca.layers import attention_bias
from coca.step_graphs import StepGraphs
from coca.text import TextTransformer, causal_mask, legacy_key_mask

logger = logging.getLogger(__name__)


class CachedDecoder:
    """IncrementalDecoder with KV caches; see the module docstring."""

    def __init__(
        self,
        text: TextTransformer,
        decoder: MultimodalDecoder,
        image_tokens: torch.Tensor,
        max_len: int,
        cuda_graphs: bool = True,
        step_function: StepFunction | None = None,
    ) -> None:
        # step_function: None runs one-token steps eagerly, layer by layer, writing the caches
        # in place; else coca.fused_step.one_token_step or its compiled form (fewer kernels).
        self.text, self.decoder = text, decoder
        self._fused_step = step_function
        self.max_len = max_len
        self.length = 0  # tokens fed so far (the filled prefix of every cache)
        self.batch = image_tokens.shape[0]
        device = image_tokens.device
        self._dtype = decoder.text_projection.dtype
        # Under autocast the new keys/values arrive in the autocast dtype; caching them in it halves
        # the bytes every step reads (and index_copy_ needs matching dtypes).
        autocast = torch.is_autocast_enabled(device.type)
        self._cache_dtype = torch.get_autocast_dtype(device.type) if autocast else self._dtype
        self._text_kv = self._alloc(text.transformer.resblocks, self.batch, device)
        self._dec_kv = self._alloc(decoder.resblocks, self.batch, device)
        self._key_valid = torch.zeros(self.batch, max_len, dtype=torch.bool, device=device)
        self._last_token = torch.zeros(self.batch, dtype=torch.long, device=device)
        self._position = torch.zeros(1, dtype=torch.long, device=device)  # == length, on device
        self._slots = torch.arange(max_len, device=device)  # (T_max,)
        # Cross-attention keys/values once per image and layer, never per row: (I, H, N, Dh) each.
        with torch.no_grad():
            # Contiguous, so one-token steps fold (I, H) into one batch axis without a copy.
            self._cross_kv = [
                tuple(t.contiguous() for t in block.image_kv(image_tokens))
                for block in decoder.cross_attn
            ]
        # The buffers reset() refills; a reorder may point _cross_kv at gathered copies.
        self._cross_kv_buffers = self._cross_kv
        self._row_image = torch.arange(self.batch)  # CPU: which image each row decodes
        self._rows_per_image: int | None = 1  # rows grouped by image, or None -> gather per row
        self._row_image_device = self._row_image.to(device)
        self._graphs = StepGraphs(enabled=cuda_graphs and device.type == "cuda")
        # float32 on the CPU: one-token steps through coca.cpu_step (transposed weights, fewer ops).
        lean = step_function is None and cpu_step.supports(decoder, device)
        self._host = cpu_step.host_weights(text, decoder) if lean else None
        self.runs_on_host = self._host is not None  # read by coca.sampling.sample
        self._host_views: tuple | None = None  # (rows, text buffer, per-layer views)

    def _alloc(self, blocks: nn.ModuleList, rows: int, device: torch.device) -> torch.Tensor:
        """Keys and values of every layer in one buffer (2, Lyr, B, H, T_max, Dh). Zeroed: the
        fixed-shape step attends to unfilled slots under a mask, and 0 * NaN garbage is NaN."""
        attn = blocks[0].attn
        heads, width = attn.heads, attn.out_proj.in_features
        shape = (2, len(blocks), rows, heads, self.max_len, width // heads)
        return torch.zeros(shape, device=device, dtype=self._cache_dtype)

    # --- protocol ---------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed tokens (B, T_new); logits for the last position (B, V)."""
        rows, n = tokens.shape
        if rows != self.batch:
            raise ValueError(f"step got {rows} rows but the decoder holds {self.batch}")
        if self.length + n > self.max_len:
            raise ValueError(
                f"sequence would reach {self.length + n} tokens, past max_len={self.max_len}"
            )
        if rows == 0:  # every row was dropped; keep the protocol's shapes
            self.length += n
            return tokens.new_zeros((0, self.decoder.text_projection.shape[1]), dtype=self._dtype)
        if n == 1 and self._host is not None:
            logits = self._step_one_host(tokens)
        elif n == 1:
            key = (rows, self._rows_per_image)
            logits = self._graphs.run(key, self._step_one, tokens)
        else:
            logits = self._step_prompt(tokens)
            self._position.fill_(self.length + n)
        self.length += n
        return logits

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i becomes old row rows[i] (keep, drop, duplicate); only the filled prefix moves.
        A CPU `rows` avoids a device sync."""
        rows_cpu = check_rows(rows, self.batch)
        new_batch = rows_cpu.numel()
        if new_batch == self.batch and torch.equal(rows_cpu, torch.arange(new_batch)):
            return
        index = rows_cpu.to(self._key_valid.device, non_blocking=True)
        t = self.length
        if new_batch > self._key_valid.shape[0]:
            self._text_kv = self._gather_into_new(self._text_kv, index)
            self._dec_kv = self._gather_into_new(self._dec_kv, index)
            self._key_valid = self._key_valid[index]  # advanced indexing: a new buffer
            self._last_token = self._last_token[index]
            self._graphs.clear()  # captured graphs point at the old buffers
        else:
            # Gather first (advanced indexing copies), then write into the same buffers, whose
            # addresses captured graphs rely on.
            self._text_kv[:, :, :new_batch, :, :t] = self._text_kv[:, :, index, :, :t]
            self._dec_kv[:, :, :new_batch, :, :t] = self._dec_kv[:, :, index, :, :t]
            self._key_valid[:new_batch] = self._key_valid[index]
            self._last_token[:new_batch] = self._last_token[index]
        self.batch = new_batch
        self._set_layout(self._row_image[rows_cpu])

    def follow_beams(self, rows: torch.Tensor) -> None:
        """reorder() for beam search's common step: `rows` (B,) on the device, same row count,
        each row taken from a row of its own image. The image layout cannot change, so no host
        copy of `rows` is needed: this skips reorder()'s device sync (one per decoding step)."""
        if rows.shape != (self.batch,):
            raise ValueError(f"follow_beams expects {self.batch} rows, got {tuple(rows.shape)}")
        t = self.length
        self._text_kv[:, :, : self.batch, :, :t] = self._text_kv[:, :, rows, :, :t]
        self._dec_kv[:, :, : self.batch, :, :t] = self._dec_kv[:, :, rows, :, :t]
        self._key_valid[: self.batch] = self._key_valid[rows]
        self._last_token[: self.batch] = self._last_token[rows]

    @torch.no_grad()
    def reset(self, image_tokens: torch.Tensor) -> None:
        """Start over on new images (I, N, D), as many as at construction, in the same buffers.

        Cross K/V are recomputed into their buffers (copy_, same addresses) and caches, length,
        position and pad-mask flags are cleared as at construction, so captured CUDA graphs,
        which read every buffer by address, replay correctly on the new batch. Graphs are
        dropped only if a reorder changed the row layout during the last batch.
        """
        rows = self._cross_kv_buffers[0][0].shape[0]
        if image_tokens.shape[0] != rows:
            raise ValueError(f"reset got {image_tokens.shape[0]} images; this decoder holds {rows}")
        layers = zip(self.decoder.cross_attn, self._cross_kv_buffers, strict=True)
        for block, buffers in layers:
            for buffer, fresh in zip(buffers, block.image_kv(image_tokens), strict=True):
                if fresh.shape != buffer.shape or fresh.dtype != buffer.dtype:
                    raise ValueError(
                        f"reset needs image tokens like the first batch's: cross K/V "
                        f"{tuple(fresh.shape)} {fresh.dtype}, buffers {tuple(buffer.shape)} "
                        f"{buffer.dtype} (same image size, dtype and autocast)"
                    )
                buffer.copy_(fresh)  # (I, H, N, Dh)
        # Zeroed, not just masked: unfilled slots are attended under a mask (see _alloc).
        for state in (self._text_kv, self._dec_kv, self._key_valid, self._last_token):
            state.zero_()
        self._position.zero_()
        self.length, self.batch = 0, rows
        original = torch.arange(rows)
        moved = self._cross_kv is not self._cross_kv_buffers or self._rows_per_image != 1
        if moved or not torch.equal(self._row_image, original):
            self._cross_kv, self._rows_per_image = self._cross_kv_buffers, 1
            self._row_image, self._row_image_device = original, original.to(self._position.device)
            self._graphs.clear()  # captured against the reordered layout's buffers

    @property
    def uses_cuda_graphs(self) -> bool:
        """Whether one-token steps are (or will be) replayed as CUDA graphs."""
        return self._graphs.enabled

    # --- the two step paths -----------------------------------------------------------------
    def _step_prompt(self, tokens: torch.Tensor) -> torch.Tensor:
        """Several tokens at once (the prompt): positions are Python ints, shapes grow."""
        rows, n = tokens.shape
        start, end = self.length, self.length + n
        previous = self._last_token[:rows] if start else None
        self._key_valid[:rows, start:end] = legacy_key_mask(tokens, self.text.pad_id, previous)
        text_mask = causal_mask(self._key_valid[:rows, :end], n)  # (B, 1, T_new, end)
        all_valid = torch.ones(1, end, dtype=torch.bool, device=tokens.device)
        dec_mask = causal_mask(all_valid, n)  # (1, 1, T_new, end)
        x = self.text.embed(tokens, start)  # (B, T_new, D)
        logits = self._run_layers(x, start, text_mask, dec_mask)
        self._last_token[:rows] = tokens[:, -1]
        return logits

    def _step_one(self, tokens: torch.Tensor) -> torch.Tensor:
        """One token per row with fixed shapes and no host sync (CUDA-graph safe)."""
        if self._fused_step is not None:
            return self._step_one_fused(tokens)
        rows = tokens.shape[0]
        pos = self._position  # (1,)
        self._mark_slot(rows)
        filled = self._slots <= pos  # (T_max,)
        # Additive biases, built once per step and shared by every layer.
        heads = self.text.transformer.resblocks[0].attn.heads
        text_valid = self._key_valid[:rows] & filled  # (B, T_max)
        text_bias = attention_bias(text_valid, heads, self._cache_dtype)  # (B*H, 1, T_max)
        dec_bias = attention_bias(filled.view(1, -1), 1, self._cache_dtype)  # (1, 1, T_max)
        emb = self.text.token_embedding(tokens).to(self._dtype)  # (B, 1, D)
        x = emb + self.text.positional_embedding.index_select(0, pos)
        logits = self._run_layers(x, pos, text_bias, dec_bias)
        self._last_token[:rows].copy_(tokens[:, -1])
        pos.add_(1)
        return logits

    def _mark_slot(self, rows: int) -> torch.Tensor:
        """Record (device-side, no sync) whether the slot at the current position is valid:
        open_clip's shifted pad mask, valid unless the previous token was pad. Returns (B,)."""
        pos = self._position  # (1,)
        valid = (self._last_token[:rows] != self.text.pad_id) | (pos == 0)  # (B,)
        self._key_valid[:rows].index_copy_(1, pos, valid.unsqueeze(1))
        return valid

    def _cross_kv_by_row(self) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
        """Each decoder layer's cross K/V and the rows per image they serve: the per-image
        K/V when rows run in equal groups per image, else a copy gathered per row (rare)."""
        if self._rows_per_image is not None:
            return self._cross_kv, self._rows_per_image
        idx = self._row_image_device
        return [(k[idx], v[idx]) for k, v in self._cross_kv], 1

    def _step_one_host(self, tokens: torch.Tensor) -> torch.Tensor:
        """One token per row on the CPU (coca.cpu_step): Python-int slot, filled prefix only."""
        rows, slot, w = tokens.shape[0], self.length, self._host
        ids = tokens[:, 0]  # (B,)
        key_valid = self._key_valid[:rows]
        if slot:  # open_clip's shifted pad mask: valid unless the previous token was pad
            torch.ne(self._last_token[:rows], self.text.pad_id, out=key_valid[:, slot])
        else:
            key_valid[:, 0] = True
        bias = None
        if not bool(key_valid[:, : slot + 1].all()):  # a pad in some prefix (rare)
            heads = w.text_blocks[0].heads
            bias = attention_bias(key_valid[:, : slot + 1], heads, torch.float32)  # (B*H, 1, S)
        cross_kv, rows_per_image = self._cross_kv_by_row()
        text_caches, dec_caches = self._host_caches(rows)
        logits = cpu_step.one_token_logits(
            w, ids, slot, bias, text_caches, dec_caches, cross_kv, rows_per_image
        )
        self._last_token[:rows].copy_(ids)
        return logits

    def _host_caches(self, rows: int) -> tuple[tuple[cpu_step.LayerCache, ...], ...]:
        """Per-layer cache views for `rows` rows, rebuilt when the rows or the buffers change."""
        made = self._host_views
        if made is None or made[0] != rows or made[1] is not self._text_kv:
            views = (
                cpu_step.layer_caches(self._text_kv, rows),
                cpu_step.layer_caches(self._dec_kv, rows),
            )
            made = self._host_views = (rows, self._text_kv, views)
        return made[2]

    def _step_one_fused(self, tokens: torch.Tensor) -> torch.Tensor:
        """_step_one through the pure step function: it reads the caches, and the new keys and
        values of every layer are written afterwards with one index_copy_ per cache."""
        rows = tokens.shape[0]
        pos = self._position  # (1,)
        valid = self._mark_slot(rows)  # (B,)
        text_valid = torch.cat([self._key_valid[:rows], valid.unsqueeze(1)], dim=1)  # (B, T+1)
        text_kv, dec_kv = self._text_kv[:, :, :rows], self._dec_kv[:, :, :rows]
        cross_kv, rows_per_image = self._cross_kv_by_row()
        logits, new_text, new_dec = self._fused_step(
            self.text,
            self.decoder,
            tokens,
            pos,
            text_valid,
            text_kv,
            dec_kv,
            cross_kv,
            rows_per_image,
        )
        text_kv.index_copy_(4, pos, new_text)  # new_*: (2, Lyr, B, H, 1, Dh)
        dec_kv.index_copy_(4, pos, new_dec)
        self._last_token[:rows].copy_(tokens[:, -1])
        pos.add_(1)
        return logits

    def _run_layers(
        self,
        x: torch.Tensor,
        position: int | torch.Tensor,
        text_mask: torch.Tensor,
        dec_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Masks: boolean for the prompt path (int position), additive biases for one-token
        steps (tensor position)."""
        rows = x.shape[0]
        few = not isinstance(position, int)
        for i, block in enumerate(self.text.transformer.resblocks):
            x = block.forward_cached(x, self._text_kv[:, i, :rows], position, text_mask)
        cross_kv, rows_per_image = self._cross_kv_by_row()
        layers = zip(self.decoder.resblocks, self.decoder.cross_attn, cross_kv, strict=True)
        for i, (self_block, cross_block, (k, v)) in enumerate(layers):
            x = self_block.forward_cached(x, self._dec_kv[:, i, :rows], position, dec_mask)
            x = cross_block.forward_with_kv(x, k, v, rows_per_image, few)
        return self.decoder.logits(x[:, -1])  # (B, V)

    # --- reorder helpers --------------------------------------------------------------------
    def _gather_into_new(self, buffer: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        shape = list(buffer.shape)
        shape[2] = index.numel()
        grown = buffer.new_zeros(shape)
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
            self._graphs.clear()
        self._rows_per_image = int(counts[0]) if runs_ok else None
        if not torch.equal(row_image, self._row_image):
            # Captured graphs read the gather index by address: replace it only when it changes.
            self._graphs.clear()
            self._row_image = row_image
            self._row_image_device = row_image.to(self._key_valid.device)
