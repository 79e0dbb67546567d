"""Group beam search over an IncrementalDecoder, vectorised over images, groups and beams.

Semantics follow transformers' group beam search with BeamSearchScorer (<= 4.55), which open_clip
3.3.0 drives: per (image, group) a heap of `S = num_beams / num_beam_groups` finished hypotheses
scored sum_logprobs / length**length_penalty (length counts every token, prompt and <end_of_text>
included); the top 2S candidates of each group are ranked, an <end_of_text> candidate becomes a
hypothesis only if it ranks in the top S, the first S other candidates become the next beams; a
group is done once its heap is full and its worst hypothesis beats best candidate / length**lp
(transformers' early_stopping=False heuristic); done groups are frozen. The diversity penalty is 0,
as in the seed. Two deliberate differences from open_clip 3.3.0: scores are log-softmax
log-probabilities (open_clip adds raw logits; `raw_logit_scores=True` reproduces that for parity
checks) and a text prompt is honoured.

Layout: decoder row of (image a, group g, beam j) is a*K + g*S + j, so rows stay grouped per image.
Legend: A active images, G groups, S beams per group, K = G*S, V vocabulary, L = seq_len.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from coca.decoding import IncrementalDecoder
from coca.sampling import (
    LaggedSnapshot,
    StoppingCriterion,
    process_scores,
    rows_to_keep,
    stopped_rows,
)

if TYPE_CHECKING:
    from coca.generate import DecodingConfig, SpecialTokens

NEG_INF = -float("inf")
UNREACHABLE = -1e9  # start score of every beam but the first of each group (as transformers)


@dataclass(frozen=True)
class BeamSearchResult:
    tokens: torch.Tensor  # (B, T) best hypothesis per image, padded
    scores: torch.Tensor  # (B,) its length-penalised score


@dataclass
class _Hypotheses:
    """Finished hypotheses, a heap of S per (image, group); score -inf marks an empty slot."""

    scores: torch.Tensor  # (A, G, S) float
    tokens: torch.Tensor  # (A, G, S, L) long, padded
    lengths: torch.Tensor  # (A, G, S) long

    def add(self, scores: torch.Tensor, tokens: torch.Tensor, length: int) -> None:
        """Keep the S best of the heap plus candidates scores (A, G, S), tokens (A, G, S, L)."""
        merged = torch.cat([self.scores, scores], dim=-1)  # (A, G, 2S)
        best, idx = merged.topk(self.scores.shape[-1], dim=-1)  # (A, G, S)
        all_tokens = torch.cat([self.tokens, tokens], dim=2)  # (A, G, 2S, L)
        self.tokens = all_tokens.gather(2, idx[..., None].expand(*idx.shape, tokens.shape[-1]))
        self.lengths = torch.cat(
            [self.lengths, torch.full_like(self.lengths, length)], dim=-1
        ).gather(-1, idx)
        self.scores = best

    def is_full(self) -> torch.Tensor:
        return (self.scores > NEG_INF).all(dim=-1)  # (A, G)

    def worst(self) -> torch.Tensor:
        return self.scores[..., -1]  # (A, G): topk keeps the heap sorted, best first

    def best(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Best hypothesis per image over all groups: score (A,), tokens (A, L), length (A,)."""
        a, g, s, seq_len = self.tokens.shape
        pick = self.scores.reshape(a, g * s).argmax(dim=-1)  # (A,)
        rows = torch.arange(a, device=pick.device)
        return (
            self.scores.reshape(a, g * s)[rows, pick],
            self.tokens.reshape(a, g * s, seq_len)[rows, pick],
            self.lengths.reshape(a, g * s)[rows, pick],
        )

    def select(self, keep: torch.Tensor) -> None:
        self.scores, self.tokens, self.lengths = (
            x[keep] for x in (self.scores, self.tokens, self.lengths)
        )


@dataclass
class _Beams:
    """Live beams of the active images, in decoder-row order."""

    images: torch.Tensor  # (A,) output row of each active image
    seqs: torch.Tensor  # (A*K, L) tokens so far, padded
    scores: torch.Tensor  # (A, G, S) sum of (log-prob) scores
    done: torch.Tensor  # (A, G) group finished: frozen, its beams receive padding
    hyps: _Hypotheses

    def select_images(self, keep: torch.Tensor) -> torch.Tensor:
        """Keep images `keep` (A',); returns their decoder rows (A'*K,)."""
        k = self.seqs.shape[0] // self.images.shape[0]
        rows = (keep[:, None] * k + torch.arange(k, device=keep.device)).reshape(-1)
        self.images, self.scores, self.done = (
            x[keep] for x in (self.images, self.scores, self.done)
        )
        self.seqs = self.seqs[rows]
        self.hyps.select(keep)
        return rows


@dataclass(frozen=True)
class _Step:
    rows: torch.Tensor  # (A*K,) decoder row each new beam continues
    tokens: torch.Tensor  # (A*K,) its new token


def beam_search(
    decoder: IncrementalDecoder,
    prompt: torch.Tensor,
    config: DecodingConfig,
    special: SpecialTokens,
    stopping_criteria: Sequence[StoppingCriterion] | None = None,
    *,
    raw_logit_scores: bool = False,
) -> BeamSearchResult:
    """Best hypothesis per image; prompt (B, T0) on a fresh decoder with one row per image."""
    batch, prompt_len = prompt.shape
    groups, seq_len = config.num_beam_groups, config.seq_len
    per_group = config.num_beams // groups
    logits = decoder.step(prompt)  # (B, V): the prompt is run once per image, not per beam
    expand_cpu = torch.arange(batch).repeat_interleave(config.num_beams)  # (B*K,)
    decoder.reorder(expand_cpu)  # a CPU index lets the decoder skip a device sync
    expand = expand_cpu.to(prompt.device, non_blocking=True)
    logits = logits[expand]  # (B*K, V)
    beams = _start_beams(prompt, expand, groups, per_group, seq_len, special.pad)
    out = prompt.new_full((batch, seq_len), special.pad)
    out_len = prompt.new_zeros(batch)
    out_scores = torch.zeros(batch, device=prompt.device)
    snapshot = LaggedSnapshot(batch, prompt.device)

    t = prompt_len
    for t in range(prompt_len, seq_len):
        candidates = _row_candidates(logits, beams.seqs[:, :t], config, special, raw_logit_scores)
        step = _advance(beams, candidates, t, config.length_penalty, special)
        beams.seqs = beams.seqs[step.rows]
        beams.seqs[:, t] = step.tokens
        if t == seq_len - 1:
            break
        if stopping_criteria and bool(
            stopped_rows(stopping_criteria, beams.seqs[:, : t + 1]).all()
        ):
            break
        rows = step.rows
        done_before = snapshot.take()  # per image, as of step t - 1, without waiting for step t
        snapshot.put(beams.done.all(dim=-1))
        keep = None
        if done_before is not None:
            if done_before.all():
                break  # every image was done before step t, which changed nothing
            keep = rows_to_keep(done_before)
            if keep is not None:  # drop finished images: their hypotheses are final
                done_now = torch.from_numpy(done_before).to(prompt.device)
                _write_best(beams, done_now, out, out_len, out_scores)
                kept = beams.select_images(torch.from_numpy(keep).to(prompt.device))
                rows, step = rows[kept], _Step(rows=step.rows[kept], tokens=step.tokens[kept])
                snapshot.clear()  # its flags index the images before this selection
        follow_beams = getattr(decoder, "follow_beams", None)
        if follow_beams is not None and keep is None:
            follow_beams(rows)  # rows stay within their image: no host copy, no device sync
        else:
            decoder.reorder(rows)  # one KV-cache gather: follow the beams, drop done images
        logits = decoder.step(step.tokens[:, None])

    _finish_open_groups(beams, t + 1, config.length_penalty)
    _write_best(beams, torch.ones_like(beams.images, dtype=torch.bool), out, out_len, out_scores)
    width = seq_len if config.fixed_output_length else int(out_len.max())
    return BeamSearchResult(tokens=out[:, :width], scores=out_scores)


def _start_beams(
    prompt: torch.Tensor,
    expand: torch.Tensor,
    groups: int,
    per_group: int,
    seq_len: int,
    pad: int,
) -> _Beams:
    batch, prompt_len = prompt.shape
    device = prompt.device
    seqs = prompt.new_full((expand.shape[0], seq_len), pad)  # (B*K, L)
    seqs[:, :prompt_len] = prompt[expand]
    # Only the first beam of each group is live at the start, so a group's beams don't all pick
    # the same token.
    scores = torch.full((batch, groups, per_group), UNREACHABLE, device=device)
    scores[..., 0] = 0.0
    hyps = _Hypotheses(
        scores=torch.full((batch, groups, per_group), NEG_INF, device=device),
        tokens=prompt.new_full((batch, groups, per_group, seq_len), pad),
        lengths=prompt.new_zeros((batch, groups, per_group)),
    )
    done = torch.zeros((batch, groups), dtype=torch.bool, device=device)
    return _Beams(
        images=torch.arange(batch, device=device), seqs=seqs, scores=scores, done=done, hyps=hyps
    )


@dataclass(frozen=True)
class _Candidates:
    scores: torch.Tensor  # (A*K, C) next-token scores of each beam (log-probs or raw logits)
    tokens: torch.Tensor | None  # (A*K, C) their token ids; None: all V tokens in order (C = V)


def _row_candidates(
    logits: torch.Tensor,
    previous: torch.Tensor,
    config: DecodingConfig,
    special: SpecialTokens,
    raw_logit_scores: bool,
) -> _Candidates:
    """Each beam's best next tokens, enough to contain its group's top 2S candidates.

    A group's 2S best (beam, token) pairs hold at most 2S tokens of any one beam, and those are
    that beam's 2S best, so ranking per beam first is exact and never writes a (A*K, V) tensor:
    the log-softmax is logit - logsumexp, one read of the logits. <end_of_text> before
    min_seq_len is dropped from 2S + 1 candidates instead of masking a copy of the logits. The
    repetition penalty changes scores token by token, so it takes the full-vocabulary path.
    """
    s2 = 2 * (config.num_beams // config.num_beam_groups)
    x = logits.float()  # (A*K, V)
    norm = 0.0 if raw_logit_scores else torch.logsumexp(x, dim=-1, keepdim=True)  # (A*K, 1)
    if config.repetition_penalty != 1.0:
        return _Candidates(process_scores(x - norm, previous, config, special), None)
    forbid_eos = previous.shape[1] < config.min_seq_len
    top, tokens = x.topk(min(s2 + forbid_eos, x.shape[-1]), dim=-1)  # (A*K, 2S[+1])
    if forbid_eos:
        top = top.masked_fill(tokens == special.eos, NEG_INF)
        top, keep = top.topk(s2, dim=-1)
        tokens = tokens.gather(-1, keep)
    return _Candidates(top - norm, tokens)


def _advance(
    beams: _Beams, candidates: _Candidates, t: int, length_penalty: float, special: SpecialTokens
) -> _Step:
    """One beam step for every active group; updates beams' scores, hyps and done flags in place."""
    a, g, s = beams.scores.shape
    c = candidates.scores.shape[-1]
    total = candidates.scores.view(a, g, s, c) + beams.scores[..., None]  # (A, G, S, C)
    top, flat = total.view(a, g, s * c).topk(2 * s, dim=-1)  # (A, G, 2S), best first
    src = flat // c  # beam within the group
    if candidates.tokens is None:
        token = flat % c
    else:
        token = candidates.tokens.view(a, g, s * c).gather(-1, flat)
    is_eos = token == special.eos
    first_row = (torch.arange(a, device=top.device)[:, None] * (g * s)) + (
        torch.arange(g, device=top.device) * s
    )  # (A, G) decoder row of each group's beam 0
    norm = float(t + 1) ** length_penalty  # t tokens so far plus the new one

    # <end_of_text> among a group's top S candidates: a finished hypothesis (done groups: none).
    finished = is_eos[..., :s] & ~beams.done[..., None]  # (A, G, S)
    cand_rows = (first_row[..., None] + src[..., :s]).reshape(-1)
    cand_tokens = beams.seqs[cand_rows].view(a, g, s, -1)  # (A, G, S, L)
    cand_tokens[..., t] = special.eos
    beams.hyps.add(torch.where(finished, top[..., :s] / norm, NEG_INF), cand_tokens, t + 1)

    # The next beams: the first S candidates that are not <end_of_text>, rank order kept.
    order = torch.argsort(is_eos.to(torch.uint8), dim=-1, stable=True)[..., :s]  # (A, G, S)
    next_src, next_token = src.gather(-1, order), token.gather(-1, order)
    frozen = beams.done[..., None].expand(a, g, s)  # done groups keep their beams and get padding
    next_src = torch.where(frozen, torch.arange(s, device=top.device), next_src)
    next_token = next_token.masked_fill(frozen, special.pad)
    beams.scores = top.gather(-1, order).masked_fill(frozen, 0.0)

    best_possible = top[..., 0] / norm  # (A, G)
    beams.done = beams.done | (beams.hyps.is_full() & (beams.hyps.worst() >= best_possible))
    rows = (first_row[..., None] + next_src).reshape(-1)  # (A*K,)
    return _Step(rows=rows, tokens=next_token.reshape(-1))


def _finish_open_groups(beams: _Beams, length: int, length_penalty: float) -> None:
    """Groups still searching at the end offer their live beams as hypotheses (as finalize())."""
    a, g, s = beams.scores.shape
    open_scores = (beams.scores / float(length) ** length_penalty).masked_fill(
        beams.done[..., None], NEG_INF
    )
    beams.hyps.add(open_scores, beams.seqs.view(a, g, s, -1), length)


def _write_best(
    beams: _Beams,
    which: torch.Tensor,
    out: torch.Tensor,
    out_len: torch.Tensor,
    out_scores: torch.Tensor,
) -> None:
    """Write the best hypothesis of the active images flagged in `which` (A,) to the outputs."""
    score, tokens, length = beams.hyps.best()
    images = beams.images[which]
    out[images], out_len[images], out_scores[images] = tokens[which], length[which], score[which]
