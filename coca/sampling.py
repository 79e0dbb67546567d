"""Greedy, top-k and top-p decoding over an IncrementalDecoder, plus the shared logits processors.

Semantics follow open_clip 3.3.0's non-beam `CoCa.generate` (which used transformers' processors):
a row is finished once its last token is <end_of_text> or the pad id, finished rows receive pad,
<end_of_text> is forced at position seq_len - 1, and temperature divides the logits *after* the
top-k / top-p filter. Greedy (argmax) gives the seed's generation_type="top_k", top_k=1 tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from coca.decoding import IncrementalDecoder

if TYPE_CHECKING:
    from coca.generate import DecodingConfig, SpecialTokens

# Called as criterion(ids (B, T), None) like transformers' StoppingCriteria; returns a bool (B,)
# tensor (True = this row is finished) or one bool for every row.
StoppingCriterion = Callable[[torch.Tensor, "torch.Tensor | None"], "torch.Tensor | bool"]

# Drop finished rows from the decoder once this fraction of the active rows has finished. Each
# drop gathers the KV caches and changes the batch shape, which makes a CUDA-graph decoder capture
# a new graph; halving at most log2(B) times keeps that rare while still shedding the per-row
# cross-attention reads of finished rows.
COMPACT_FRACTION = 0.5


def penalize_repetitions(
    scores: torch.Tensor, previous: torch.Tensor, penalty: float
) -> torch.Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor: scores (R, V), previous tokens (R, T)."""
    if penalty == 1.0:
        return scores
    seen = scores.gather(1, previous)  # (R, T)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, previous, seen)


def process_scores(
    scores: torch.Tensor,
    previous: torch.Tensor,
    config: DecodingConfig,
    special: SpecialTokens,
) -> torch.Tensor:
    """Min length then repetition penalty, in the seed's order; scores (R, V), previous (R, T)."""
    if previous.shape[1] < config.min_seq_len:
        # MinLengthLogitsProcessor: no <end_of_text> while the sequence is shorter than min_seq_len.
        scores = scores.clone()
        scores[:, special.eos] = -float("inf")
    return penalize_repetitions(scores, previous, config.repetition_penalty)


def keep_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """transformers' TopKLogitsWarper: everything below the k-th best score -> -inf. (R, V)."""
    k = min(k, scores.shape[-1])
    kth = scores.topk(k, dim=-1).values[..., -1:]  # (R, 1)
    return scores.masked_fill(scores < kth, -float("inf"))


def keep_top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """transformers' TopPLogitsWarper: the smallest set of tokens with probability mass >= p."""
    sorted_scores, order = scores.sort(dim=-1)  # ascending, (R, V)
    mass_below = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = mass_below <= 1 - p
    drop_sorted[..., -1] = False  # always keep the best token
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, -float("inf"))


def choose_tokens(
    logits: torch.Tensor,
    previous: torch.Tensor,
    config: DecodingConfig,
    special: SpecialTokens,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Next token per row: logits (R, V), previous tokens (R, T) -> (R,) long."""
    scores = process_scores(logits.float(), previous, config, special)
    if is_greedy(config):
        return scores.argmax(dim=-1)
    if config.generation_type == "top_k":
        scores = keep_top_k(scores, config.top_k)
    else:
        scores = keep_top_p(scores, config.top_p)
    probs = (scores / config.temperature).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def is_greedy(config: DecodingConfig) -> bool:
    """Argmax decoding: generation_type greedy, or the seed's top_k with k = 1."""
    kind = config.generation_type
    return kind == "greedy" or (kind == "top_k" and config.top_k == 1)


def next_column(
    logits: torch.Tensor,
    seqs: torch.Tensor,
    t: int,
    done: torch.Tensor,
    length: torch.Tensor,
    config: DecodingConfig,
    special: SpecialTokens,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Write column t of seqs (R, L): the chosen tokens, pad for finished rows, <end_of_text>
    forced at the last position (as the seed does; its logits are never needed). Returns the
    tokens (R,), the finished flags and the lengths (<end_of_text> included) after column t."""
    if t < seqs.shape[1] - 1:
        token = choose_tokens(logits, seqs[:, :t], config, special, generator)  # (R,)
    else:
        token = torch.full_like(length, special.eos)
    token = token.masked_fill(done, special.pad)
    seqs[:, t] = token
    length = torch.where(done, length, t + 1)
    done = done | (token == special.eos) | (token == special.pad)
    return token, done, length


class LaggedSnapshot:
    """A device bool vector, read on the host one step after it was queued.

    Reading the flags of the step just queued would make the CPU wait for the GPU at every step,
    leaving the GPU idle while Python queues the next step. Reading the previous step's flags keeps
    one step in flight; the price is at most one extra step whose output is all padding. The same
    lag is used on every device, so CPU tests exercise the GPU control flow.
    """

    def __init__(self, size: int, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._host = torch.zeros(size, dtype=torch.bool, pin_memory=self._cuda)
        self._event = torch.cuda.Event() if self._cuda else None
        self._pending = 0  # number of valid flags queued; 0 = nothing to read

    def put(self, flags: torch.Tensor) -> None:
        n = flags.shape[0]
        self._host[:n].copy_(flags, non_blocking=self._cuda)
        if self._event is not None:
            self._event.record()
        self._pending = n

    def take(self) -> np.ndarray | None:
        """The flags queued by the last `put`; None when there are none or they were cleared."""
        if not self._pending:
            return None
        if self._event is not None:
            self._event.synchronize()
        flags = self._host[: self._pending].numpy().copy()
        self._pending = 0
        return flags

    def clear(self) -> None:
        """Forget queued flags, e.g. because the rows they describe were just reordered."""
        self._pending = 0


def rows_to_keep(finished: np.ndarray) -> np.ndarray | None:
    """Rows (or images) to keep, when enough have finished to make dropping them worth it."""
    n_done = int(finished.sum())
    if n_done == 0 or n_done < COMPACT_FRACTION * len(finished):
        return None
    return np.flatnonzero(~finished)


def stopped_rows(criteria: Sequence[StoppingCriterion], ids: torch.Tensor) -> torch.Tensor:
    """OR of the user's stopping criteria on ids (R, T) -> (R,) bool."""
    stop = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for criterion in criteria:
        flag = criterion(ids, None)
        stop = stop | torch.as_tensor(flag, device=ids.device).to(torch.bool).expand_as(stop)
    return stop


def sample(
    decoder: IncrementalDecoder,
    prompt: torch.Tensor,
    config: DecodingConfig,
    special: SpecialTokens,
    stopping_criteria: Sequence[StoppingCriterion] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Greedy / top-k / top-p decoding of a batch; prompt (B, T0) -> ids (B, T), T <= seq_len.

    Per-row state lives in decoder-row order; rows that finished are dropped from the decoder in
    batches (see COMPACT_FRACTION) and their tokens written back to `out` first.
    """
    batch, prompt_len = prompt.shape
    seq_len = config.seq_len
    out = prompt.new_full((batch, seq_len), special.pad)  # (B, L) in image order
    out_len = prompt.new_full((batch,), prompt_len)  # tokens per row, <end_of_text> included
    # Preallocated (B, L) token buffer, written in place one column per step.
    seqs = out.clone()
    seqs[:, :prompt_len] = prompt
    rows = torch.arange(batch, device=prompt.device)  # output row of each decoder row
    done = (prompt[:, -1] == special.eos) | (prompt[:, -1] == special.pad)
    length = out_len.clone()
    snapshot = LaggedSnapshot(batch, prompt.device)
    # A decoder that computes on the host (coca.incremental.CachedDecoder on the CPU) has no
    # device queue to keep busy: reading the flags at once saves the lag's extra step. Greedy
    # only: sampling would drop rows a step earlier and so draw a different random stream.
    on_host = bool(getattr(decoder, "runs_on_host", False)) and is_greedy(config)

    logits = decoder.step(prompt)  # (B, V)
    for t in range(prompt_len, seq_len):
        token, done, length = next_column(
            logits, seqs, t, done, length, config, special, generator
        )  # token (A,)
        if stopping_criteria:
            done = done | stopped_rows(stopping_criteria, seqs[:, : t + 1])
        if t == seq_len - 1:
            break
        if on_host:  # the flags are host memory already: read this step's, no extra step
            finished = done.numpy()
        else:
            finished = snapshot.take()  # as of step t - 1, without waiting for step t
            snapshot.put(done)
        if finished is not None:
            if finished.all():
                break  # every row is finished (lagged: step t produced only padding)
            keep = rows_to_keep(finished)
            if keep is not None:
                out[rows], out_len[rows] = seqs, length
                kept_cpu = torch.from_numpy(keep)  # a CPU index lets the decoder skip a sync
                kept = kept_cpu.to(prompt.device, non_blocking=True)
                rows, seqs, done, length, token = (
                    x[kept] for x in (rows, seqs, done, length, token)
                )
                decoder.reorder(kept_cpu)
                snapshot.clear()  # its flags index the rows before this reorder
        if t + 1 < seq_len - 1:
            logits = decoder.step(token[:, None])
    out[rows], out_len[rows] = seqs, length
    width = seq_len if config.fixed_output_length else int(out_len.max())
    return out[:, :width]
