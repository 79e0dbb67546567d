"""Greedy captions batch after batch with one model, reusing the decoder and its CUDA graphs.

Building a `CachedDecoder` per batch means allocating its caches and, on CUDA, warming up and
capturing the one-token step's graph again for every batch: on an H100 that host work was most
of the indexer's wall clock. A `CaptionEngine` keeps a decoder per batch shape and `reset()`s it
for the next batch of that shape (same buffers, so captured graphs stay valid).

Where steps replay CUDA graphs, rows are never dropped mid-batch (`decode_greedy_fixed`): every
step then has the shape of the captured graph, finished rows just receive padding, and a smaller
batch (the last one) is padded up to the captured row count and its extra rows dropped. Decoders
that compute on the host (float32 on the CPU) keep coca.sampling's greedy loop, which drops
finished rows (compute is what costs there), and get a decoder per exact batch size.
Beam search and sampling are passed through to `generate_from_tokens` (a fresh decoder each).

Legend: B rows, N image tokens, D width, L seq_len, V vocabulary.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import torch

from coca.generate import DecodingConfig, SpecialTokens, decode, eval_no_grad, generate_from_tokens
from coca.incremental import CachedDecoder
from coca.sampling import LaggedSnapshot, is_greedy, next_column

logger = logging.getLogger(__name__)

# Read the "every row finished" flags every this many steps: each read waits for the GPU, so
# reading less often lets the host queue steps further ahead; the price is at most this many
# extra steps of padding after the last row finished (trimmed from the result).
POLL_EVERY = 4


def decode_greedy_fixed(
    decoder: CachedDecoder,
    prompt: torch.Tensor,
    config: DecodingConfig,
    special: SpecialTokens,
    keep_rows: int | None = None,
    poll_every: int = POLL_EVERY,
) -> torch.Tensor:
    """Greedy decoding that keeps every row to the end: prompt (B, T0) -> ids (keep_rows, T).

    Tokens equal coca.sampling.sample's greedy ones (finished rows get pad there too, once
    dropped); only the first `keep_rows` rows (default all) are returned, and the width follows
    those rows. No host sync per step: the finished flags are copied without waiting and read
    every `poll_every` steps.
    """
    batch, prompt_len = prompt.shape
    seq_len, keep = config.seq_len, batch if keep_rows is None else keep_rows
    if prompt_len >= seq_len:
        raise ValueError(f"the prompt has {prompt_len} tokens; seq_len ({seq_len}) must be larger")
    seqs = prompt.new_full((batch, seq_len), special.pad)  # (B, L)
    seqs[:, :prompt_len] = prompt
    length = prompt.new_full((batch,), prompt_len)  # tokens per row, <end_of_text> included
    done = (prompt[:, -1] == special.eos) | (prompt[:, -1] == special.pad)  # (B,)
    snapshot = LaggedSnapshot(batch, prompt.device)
    logits = decoder.step(prompt)  # (B, V)
    for t in range(prompt_len, seq_len):
        token, done, length = next_column(logits, seqs, t, done, length, config, special, None)
        if t + 1 >= seq_len - 1:
            continue  # the last column needs no logits
        if (t - prompt_len) % poll_every == poll_every - 1:
            finished = snapshot.take()  # as of the previous step: step t stays queued
            if finished is not None and finished.all():
                break
        snapshot.put(done[:keep])
        logits = decoder.step(token[:, None])
    width = seq_len if config.fixed_output_length else int(length[:keep].max())
    return seqs[:keep, :width]


class CaptionEngine:
    """Captions for already-encoded images, batch after batch, with one model and one config.

    Holds up to `max_decoders` decoders (caches, captured graphs) keyed by batch shape, image
    tokens, dtype, device and autocast; a batch of a known shape resets the pooled decoder.
    Meant for one model whose weights are not moved (`.to()`) while the engine lives.
    """

    def __init__(self, model: Any, config: DecodingConfig, max_decoders: int = 2) -> None:
        self.model, self.config = model, config
        self.max_decoders = max_decoders
        # None: fixed-length loop wherever steps do not run on the host; True/False forces it.
        self.fixed_length: bool | None = None
        self._pool: OrderedDict[tuple, CachedDecoder] = OrderedDict()
        self.decoders_built = 0  # for tests and benchmarks: a steady run builds one or two
        self.batches = 0

    def generate(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Image tokens (B, N, D) -> ids (B, T), as generate_from_tokens(model, tokens, config)."""
        if not is_greedy(self.config):
            return generate_from_tokens(self.model, image_tokens, self.config)
        if image_tokens.shape[0] == 0:
            raise ValueError("cannot caption an empty batch: pass at least one image")
        special = SpecialTokens.from_model(self.model)
        rows = image_tokens.shape[0]
        with eval_no_grad(self.model):
            decoder = self._decoder_for(image_tokens.to(self.model.dtype))
            prompt = torch.full((decoder.batch, 1), special.sot, device=image_tokens.device)
            self.batches += 1
            if self._fixed(decoder):
                return decode_greedy_fixed(decoder, prompt, self.config, special, rows)
            return decode(decoder, prompt, self.config, special)

    def _fixed(self, decoder: CachedDecoder) -> bool:
        return not decoder.runs_on_host if self.fixed_length is None else self.fixed_length

    def _decoder_for(self, tokens: torch.Tensor) -> CachedDecoder:
        """A pooled decoder reset to `tokens` (B, N, D), padded with copies of the last image up
        to a pooled fixed-length decoder's row count, or a new decoder for this shape."""
        # The model's step switches (graphs, compiled step) shape the decoder too.
        switches = (self.model.decode_with_cuda_graphs, self.model.decode_compiled)
        shape = (*_shape_key(tokens), *switches)
        rows = self._padded_rows(shape, tokens.shape[0])
        if rows > tokens.shape[0]:
            extra = tokens[-1:].expand(rows - tokens.shape[0], -1, -1)  # (R - B, N, D)
            tokens = torch.cat([tokens, extra])  # rows finish like the last real one
        key = (rows, *shape)
        decoder = self._pool.get(key)
        if decoder is not None:
            self._pool.move_to_end(key)
            decoder.reset(tokens)
            return decoder
        decoder = self.model.incremental_decoder(tokens, max_len=self.config.seq_len)
        self.decoders_built += 1
        logger.debug("caption decoder built for %d rows, key %s", rows, key)
        self._pool[key] = decoder
        while len(self._pool) > self.max_decoders:
            self._pool.popitem(last=False)
        return decoder

    def _padded_rows(self, shape: tuple, rows: int) -> int:
        """The smallest pooled row count >= rows among fixed-length decoders of this shape
        (padding beats a new graph capture), else rows itself."""
        fits = [
            key[0]
            for key, decoder in self._pool.items()
            if key[1:] == shape and key[0] >= rows and self._fixed(decoder)
        ]
        return min(fits, default=rows)


def _shape_key(tokens: torch.Tensor) -> tuple:
    """What a decoder's buffers and graphs depend on besides the row count: image tokens (N, D),
    dtype, device, the autocast dtype of the step, and inference mode (buffers made under
    torch.inference_mode cannot be written outside it)."""
    device = tokens.device.type
    autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    inference = torch.is_inference_mode_enabled()
    return (*tokens.shape[1:], tokens.dtype, tokens.device, autocast, inference)
