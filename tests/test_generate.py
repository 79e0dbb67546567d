"""Search algorithms of coca.generate against a tiny fake language model with and without a cache.

The fake LM's next-token logits depend on an integer hash of the whole prefix, so the cached decoder
(which keeps only the hash) and the uncached one (which keeps every token and rehashes the prefix)
give bit-identical logits, and any row mix-up in the search shows up as different tokens. Reference
searches written naively (per image, per beam, Python lists) check the vectorised ones.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from coca.beam_search import beam_search
from coca.generate import (
    DecodingConfig,
    SpecialTokens,
    caption_texts,
    decode,
    generate,
    generate_from_tokens,
)
from coca.sampling import keep_top_k, keep_top_p, penalize_repetitions

VOCAB = 12
PAD, SOT, EOS = 0, 10, 11
SPECIAL = SpecialTokens(sot=SOT, eos=EOS, pad=PAD)
TABLE_ROWS = 4093
HASH_MOD = 1_000_003
N_TOKENS, WIDTH = 3, 4  # fake image tokens (B, N, D)


class HashLM:
    """logits = table[hash(prefix)] + image bias + an <end_of_text> boost growing with length."""

    def __init__(self, seed: int = 0, eos_slope: float = 0.35, pad_logit: float = -4.0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(TABLE_ROWS, VOCAB, generator=g) * 2.0
        self.table[:, PAD] = pad_logit  # "!" (the pad id) is a rare real token, as in CLIP
        self.table[:, SOT] = -30.0
        self.image_proj = torch.randn(WIDTH, VOCAB, generator=g)
        self.eos_slope = eos_slope

    def image_bias(self, image_tokens: torch.Tensor) -> torch.Tensor:
        return image_tokens.mean(dim=1) @ self.image_proj  # (B, V)

    def logits(self, h: torch.Tensor, bias: torch.Tensor, length: int) -> torch.Tensor:
        out = self.table[h % TABLE_ROWS] + bias  # (R, V)
        out[:, EOS] += self.eos_slope * length - 2.0
        return out


def rehash(h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    for column in tokens.unbind(dim=1):
        h = (h * 31 + column + 1) % HASH_MOD
    return h


class CachedDecoder:
    """Keeps only the prefix hash per row (the 'KV cache')."""

    def __init__(self, lm: HashLM, image_tokens: torch.Tensor) -> None:
        self.lm, self.bias = lm, lm.image_bias(image_tokens)
        self.h = torch.zeros(image_tokens.shape[0], dtype=torch.long)
        self.length = 0
        self.row_counts: list[int] = []

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        assert tokens.shape[0] == self.h.shape[0], "step rows must match decoder rows"
        self.h = rehash(self.h, tokens)
        self.length += tokens.shape[1]
        self.row_counts.append(tokens.shape[0])
        return self.lm.logits(self.h, self.bias, self.length)

    def reorder(self, rows: torch.Tensor) -> None:
        self.h, self.bias = self.h[rows], self.bias[rows]


class FullPrefixDecoder:
    """Keeps every token and rehashes the whole prefix at each step (the uncached reference)."""

    def __init__(self, lm: HashLM, image_tokens: torch.Tensor) -> None:
        self.lm, self.bias = lm, lm.image_bias(image_tokens)
        self.tokens = torch.zeros((image_tokens.shape[0], 0), dtype=torch.long)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens = torch.cat([self.tokens, tokens], dim=1)
        h = rehash(torch.zeros(self.tokens.shape[0], dtype=torch.long), self.tokens)
        return self.lm.logits(h, self.bias, self.tokens.shape[1])

    def reorder(self, rows: torch.Tensor) -> None:
        self.tokens, self.bias = self.tokens[rows], self.bias[rows]


class FakeModel:
    """Implements the part of the CoCa model API that generate() uses."""

    def __init__(self, lm: HashLM, cached: bool = True) -> None:
        self.lm, self.cached = lm, cached
        self.tokenizer = SimpleNamespace(
            sot_token_id=SOT,
            eot_token_id=EOS,
            pad_token_id=PAD,
            decode=lambda ids: " ".join(f"w{i}" for i in ids),
            batch_decode=lambda rows: [" ".join(f"w{i}" for i in ids) for ids in rows],
        )
        self.encoded_batches: list[int] = []
        self.decoders: list[CachedDecoder | FullPrefixDecoder] = []

    def encode_image_with_tokens(self, images: torch.Tensor) -> SimpleNamespace:
        self.encoded_batches.append(images.shape[0])
        tokens = images.flatten(1)[:, : N_TOKENS * WIDTH].reshape(-1, N_TOKENS, WIDTH)
        return SimpleNamespace(latent=tokens.mean(1), tokens=tokens)

    def incremental_decoder(self, image_tokens: torch.Tensor, max_len: int = 76) -> object:
        cls = CachedDecoder if self.cached else FullPrefixDecoder
        self.decoders.append(cls(self.lm, image_tokens))
        return self.decoders[-1]


def images(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 2, 2, generator=torch.Generator().manual_seed(seed))


def image_tokens(batch: int, seed: int = 1) -> torch.Tensor:
    return FakeModel(HashLM()).encode_image_with_tokens(images(batch, seed)).tokens


def sequence_lengths(ids: torch.Tensor) -> list[int]:
    """Tokens up to and including the first <end_of_text> (or the whole row)."""
    lengths = []
    for row in ids.tolist():
        lengths.append(row.index(EOS) + 1 if EOS in row else len(row))
    return lengths


def next_logprobs(lm: HashLM, tokens_1: torch.Tensor, prefix: list[int]) -> torch.Tensor:
    decoder = FullPrefixDecoder(lm, tokens_1)
    return decoder.step(torch.tensor([prefix])).float().log_softmax(-1)[0]  # (V,)


def sequence_score(lm: HashLM, tokens_1: torch.Tensor, row: list[int], prompt_len: int) -> float:
    """HF beam score of a finished row: sum of log-probs after the prompt / full length."""
    length = row.index(EOS) + 1 if EOS in row else len(row)
    total = sum(
        float(next_logprobs(lm, tokens_1, row[:i])[row[i]]) for i in range(prompt_len, length)
    )
    return total / length


def reference_greedy(lm: HashLM, tokens: torch.Tensor, config: DecodingConfig) -> list[list[int]]:
    """The seed's top_k=1 loop, one image at a time, no cache."""
    rows = []
    for b in range(tokens.shape[0]):
        row = [SOT]
        while len(row) < config.seq_len and row[-1] not in (EOS, PAD):
            scores = next_logprobs(lm, tokens[b : b + 1], row)
            if len(row) < config.min_seq_len:
                scores[EOS] = -float("inf")
            row.append(EOS if len(row) == config.seq_len - 1 else int(scores.argmax()))
        rows.append(row)
    return rows


def reference_beam_search(
    lm: HashLM, tokens_1: torch.Tensor, config: DecodingConfig, prompt: list[int]
) -> tuple[list[int], float]:
    """transformers' group beam search (BeamSearchScorer) for one image, written with lists."""
    s = config.num_beams // config.num_beam_groups
    groups = range(config.num_beam_groups)
    beams = [[(torch.tensor(0.0 if j == 0 else -1e9), prompt) for j in range(s)] for _ in groups]
    hyps: list[list[tuple[float, list[int]]]] = [[] for _ in groups]
    done = [False for _ in groups]
    length = len(prompt)
    for t in range(len(prompt), config.seq_len):
        length = t + 1
        for g in groups:
            if done[g]:
                continue
            candidates = []
            for j, (score, row) in enumerate(beams[g]):
                logp = next_logprobs(lm, tokens_1, row)
                if t < config.min_seq_len:
                    logp[EOS] = -float("inf")
                for v in set(row):  # transformers' repetition penalty, applied to log-probs
                    penalty = config.repetition_penalty
                    logp[v] = logp[v] * penalty if logp[v] < 0 else logp[v] / penalty
                candidates += [(score + logp[v], j, v) for v in range(VOCAB)]
            candidates = sorted(candidates, key=lambda c: -float(c[0]))[: 2 * s]
            new_beams = []
            for rank, (score, j, v) in enumerate(candidates):
                if v == EOS and rank < s:
                    hyps[g].append((float(score) / length**config.length_penalty, beams[g][j][1]))
                    hyps[g] = sorted(hyps[g], key=lambda h: -h[0])[:s]
                elif v != EOS:
                    new_beams.append((score, beams[g][j][1] + [v]))
                if len(new_beams) == s:
                    break
            beams[g] = new_beams
            best = float(candidates[0][0]) / length**config.length_penalty
            done[g] = len(hyps[g]) == s and hyps[g][-1][0] >= best
        if all(done):
            break
    finals = [
        (float(score) / length**config.length_penalty, row)
        for g in groups
        if not done[g]
        for score, row in beams[g]
    ]
    finals += [(score, row + [EOS]) for g in groups for score, row in hyps[g]]
    score, row = max(finals, key=lambda f: f[0])
    return row, score


# --- cached vs uncached ------------------------------------------------------------------------


@pytest.mark.parametrize("generation_type", ["greedy", "beam_search"])
def test_generate_cached_and_uncached_decoders_give_identical_tokens(generation_type: str) -> None:
    lm = HashLM(seed=3)
    kwargs = dict(generation_type=generation_type, seq_len=14, num_beams=4, num_beam_groups=2)
    cached = generate(FakeModel(lm, cached=True), images(9), **kwargs)
    uncached = generate(FakeModel(lm, cached=False), images(9), **kwargs)
    assert torch.equal(cached, uncached)
    assert len(set(sequence_lengths(cached))) >= 3, "rows should finish at different steps"


def test_greedy_matches_the_seed_loop_and_drops_finished_rows() -> None:
    lm = HashLM(seed=5)
    model = FakeModel(lm)
    config = DecodingConfig(generation_type="greedy", seq_len=16)
    ids = generate_from_tokens(model, image_tokens(12), config)
    expected = reference_greedy(lm, image_tokens(12), config)
    width = max(len(r) for r in expected)
    assert ids.shape == (12, width)
    for row, ref in zip(ids.tolist(), expected, strict=True):
        assert row == ref + [PAD] * (width - len(ref))
    rows_per_step = model.decoders[0].row_counts
    assert min(rows_per_step) < 12, "finished rows should have been dropped from the decoder"


def test_greedy_equals_seed_top_k_with_k_1() -> None:
    lm = HashLM(seed=6)
    greedy = generate(FakeModel(lm), images(6), generation_type="greedy")
    top1 = generate(FakeModel(lm), images(6), generation_type="top_k", top_k=1)
    assert torch.equal(greedy, top1)


# --- beam search ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_beams", "groups", "length_penalty", "min_seq_len", "repetition_penalty", "lm_seed"),
    [
        (4, 2, 1.0, 5, 1.0, 0),
        (6, 3, 1.0, 3, 1.0, 1),
        (3, 1, 0.5, 2, 1.0, 2),
        (4, 1, 2.0, 6, 1.0, 4),
        (2, 2, 1.0, 1, 1.0, 7),
        (4, 2, 1.0, 3, 1.3, 21),
    ],
)
def test_beam_search_matches_reference_implementation(
    num_beams: int,
    groups: int,
    length_penalty: float,
    min_seq_len: int,
    repetition_penalty: float,
    lm_seed: int,
) -> None:
    lm = HashLM(seed=lm_seed, eos_slope=0.25)
    config = DecodingConfig(
        num_beams=num_beams,
        num_beam_groups=groups,
        length_penalty=length_penalty,
        min_seq_len=min_seq_len,
        repetition_penalty=repetition_penalty,
        seq_len=11,
    )
    tokens = image_tokens(5, seed=lm_seed)
    prompt = torch.full((5, 1), SOT)
    result = beam_search(CachedDecoder(lm, tokens), prompt, config, SPECIAL)
    for b in range(5):
        row, score = reference_beam_search(lm, tokens[b : b + 1], config, [SOT])
        got = result.tokens[b].tolist()
        assert got[: len(row)] == row
        assert all(x == PAD for x in got[len(row) :])
        assert result.scores[b].item() == pytest.approx(score, rel=1e-5)


def test_beam_search_drops_finished_images_without_changing_results() -> None:
    lm = HashLM(seed=20, eos_slope=0.5)
    tokens = image_tokens(8, seed=20)
    config = DecodingConfig(num_beams=4, num_beam_groups=2, seq_len=20, min_seq_len=2)
    decoder = CachedDecoder(lm, tokens)
    result = beam_search(decoder, torch.full((8, 1), SOT), config, SPECIAL)
    assert min(decoder.row_counts[1:]) < 8 * 4, "finished images should leave the decoder"
    for b in range(8):
        row, score = reference_beam_search(lm, tokens[b : b + 1], config, [SOT])
        assert result.tokens[b, : len(row)].tolist() == row
        assert result.scores[b].item() == pytest.approx(score, rel=1e-5)


def test_beam_search_score_matches_rescoring_from_scratch() -> None:
    lm = HashLM(seed=8)
    tokens = image_tokens(6, seed=8)
    config = DecodingConfig(seq_len=20)
    result = beam_search(CachedDecoder(lm, tokens), torch.full((6, 1), SOT), config, SPECIAL)
    for b, row in enumerate(result.tokens.tolist()):
        rescored = sequence_score(lm, tokens[b : b + 1], row, prompt_len=1)
        assert result.scores[b].item() == pytest.approx(rescored, rel=1e-5)


def test_beam_search_with_one_beam_equals_greedy() -> None:
    lm = HashLM(seed=9, eos_slope=0.6)  # every row ends well before seq_len
    config = DecodingConfig(generation_type="greedy", seq_len=25)
    greedy = generate_from_tokens(FakeModel(lm), image_tokens(8), config)
    beam_config = dataclasses.replace(
        config, generation_type="beam_search", num_beams=1, num_beam_groups=1
    )
    beam = generate_from_tokens(FakeModel(lm), image_tokens(8), beam_config)
    assert max(sequence_lengths(greedy)) < 25
    assert torch.equal(greedy, beam)


def test_beam_search_scores_at_least_as_well_as_greedy() -> None:
    lm = HashLM(seed=10, eos_slope=0.3)
    tokens = image_tokens(8, seed=10)
    greedy = generate_from_tokens(
        FakeModel(lm), tokens, DecodingConfig(generation_type="greedy", seq_len=25)
    )
    beam = generate_from_tokens(FakeModel(lm), tokens, DecodingConfig(seq_len=25))
    strictly_better = 0
    for b in range(8):
        g = sequence_score(lm, tokens[b : b + 1], greedy[b].tolist(), 1)
        s = sequence_score(lm, tokens[b : b + 1], beam[b].tolist(), 1)
        assert s >= g - 1e-6
        strictly_better += s > g + 1e-6
    assert strictly_better >= 1, "on a random LM beam search should beat greedy somewhere"


def test_beam_search_encodes_each_image_once() -> None:
    model = FakeModel(HashLM())
    generate(model, images(4), num_beams=6, num_beam_groups=3)
    assert model.encoded_batches == [4]
    assert model.decoders[0].row_counts[0] == 4  # the prompt runs once per image, not per beam
    assert max(model.decoders[0].row_counts) == 24


def test_beam_search_raw_logit_mode_differs_only_in_scoring() -> None:
    lm = HashLM(seed=11)
    tokens = image_tokens(4, seed=11)
    prompt = torch.full((4, 1), SOT)
    config = DecodingConfig(seq_len=12)
    raw = beam_search(CachedDecoder(lm, tokens), prompt, config, SPECIAL, raw_logit_scores=True)
    # With raw logits every step adds logits, not log-probs: rescore the same way.
    for b, row in enumerate(raw.tokens.tolist()):
        length = sequence_lengths(raw.tokens[b : b + 1])[0]
        total = sum(
            float(FullPrefixDecoder(lm, tokens[b : b + 1]).step(torch.tensor([row[:i]]))[0, row[i]])
            for i in range(1, length)
        )
        assert raw.scores[b].item() == pytest.approx(total / length, rel=1e-5)


# --- sampling ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs", [dict(generation_type="top_k", top_k=4), dict(generation_type="top_p", top_p=0.8)]
)
def test_sampling_is_reproducible_with_a_generator(kwargs: dict) -> None:
    lm = HashLM(seed=12)

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return generate(FakeModel(lm), images(8), seq_len=20, generator=g, **kwargs)

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_top_k_sampling_only_emits_the_k_best_tokens() -> None:
    lm = HashLM(seed=13, eos_slope=0.0)
    tokens = image_tokens(6, seed=13)
    g = torch.Generator().manual_seed(0)
    config = DecodingConfig(generation_type="top_k", top_k=2, seq_len=12, min_seq_len=2)
    ids = generate_from_tokens(FakeModel(lm), tokens, config, generator=g)
    for b, row in enumerate(ids.tolist()):
        for i in range(1, sequence_lengths(ids[b : b + 1])[0] - 1):
            if row[i - 1] in (EOS, PAD):
                break
            logp = next_logprobs(lm, tokens[b : b + 1], row[:i])
            if i < config.min_seq_len:
                logp[EOS] = -float("inf")
            assert row[i] in logp.topk(2).indices.tolist()


def test_keep_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = keep_top_p(probs.log(), 0.75).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    assert keep_top_p(probs.log(), 0.0).isfinite().sum() == 1  # always keeps the best token


def test_keep_top_k_and_repetition_penalty_follow_transformers() -> None:
    scores = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    assert keep_top_k(scores, 2).isfinite().tolist() == [[True, False, False, True]]
    penalized = penalize_repetitions(scores, torch.tensor([[0, 1]]), 2.0)
    assert penalized.tolist() == [[1.0, -2.0, 0.5, 3.0]]


# --- lengths, padding, prompts -------------------------------------------------------------------


@pytest.mark.parametrize("generation_type", ["greedy", "beam_search", "top_p"])
def test_generate_respects_min_seq_len(generation_type: str) -> None:
    lm = HashLM(seed=14, eos_slope=3.0)  # <end_of_text> dominates from the second token on
    ids = generate(
        FakeModel(lm),
        images(5),
        generation_type=generation_type,
        min_seq_len=7,
        top_p=0.9,
        generator=torch.Generator().manual_seed(0),
    )
    lengths = sequence_lengths(ids)
    assert min(lengths) == 8  # 7 tokens then <end_of_text> as soon as it is allowed
    assert all(EOS not in row[:7] for row in ids.tolist())


@pytest.mark.parametrize("generation_type", ["greedy", "beam_search"])
def test_fixed_output_length_pads_to_seq_len(generation_type: str) -> None:
    lm = HashLM(seed=15, eos_slope=1.0)
    short = generate(FakeModel(lm), images(3), generation_type=generation_type, seq_len=20)
    fixed = generate(
        FakeModel(lm),
        images(3),
        generation_type=generation_type,
        seq_len=20,
        fixed_output_length=True,
    )
    assert short.shape[1] < 20
    assert fixed.shape == (3, 20)
    assert torch.equal(fixed[:, : short.shape[1]], short)
    assert (fixed[:, short.shape[1] :] == PAD).all()


def test_greedy_ends_rows_at_seq_len_with_end_of_text() -> None:
    lm = HashLM(seed=16, eos_slope=-1.0)  # never wants to stop
    ids = generate(FakeModel(lm), images(3), generation_type="greedy", seq_len=9)
    assert ids.shape == (3, 9)
    assert (ids[:, -1] == EOS).all()
    beam = generate(FakeModel(lm), images(3), seq_len=9)
    assert beam.shape == (3, 9) and not (beam == EOS).any()  # beams hit max length unfinished


@pytest.mark.parametrize("generation_type", ["greedy", "beam_search"])
def test_generate_continues_a_text_prompt(generation_type: str) -> None:
    lm = HashLM(seed=17)
    prompt = torch.tensor([SOT, 3, 4])
    ids = generate(FakeModel(lm), images(4), text=prompt, generation_type=generation_type)
    assert (ids[:, :3] == prompt).all()
    uncached = generate(
        FakeModel(lm, cached=False), images(4), text=prompt, generation_type=generation_type
    )
    assert torch.equal(ids, uncached)


def test_stopping_criteria_finish_rows_early() -> None:
    lm = HashLM(seed=18, eos_slope=-1.0)

    def at_six(ids: torch.Tensor, scores: torch.Tensor | None) -> torch.Tensor:
        return torch.full((ids.shape[0],), ids.shape[1] >= 6)

    ids = generate(FakeModel(lm), images(3), generation_type="greedy", stopping_criteria=[at_six])
    assert ids.shape == (3, 6)
    beam = generate(FakeModel(lm), images(3), stopping_criteria=[at_six])
    assert beam.shape == (3, 6)


def test_caption_texts_strips_special_tokens() -> None:
    ids = torch.tensor(
        [[SOT, 3, 4, EOS, PAD, PAD], [SOT, 5, 6, 7, 8, 9], [SOT, 2, PAD, PAD, PAD, PAD]]
    )
    assert caption_texts(FakeModel(HashLM()), ids) == ["w3 w4", "w5 w6 w7 w8 w9", "w2"]


# --- bad arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(generation_type="nucleus"), "unknown generation_type"),
        (dict(seq_len=5, min_seq_len=5), "larger than min_seq_len"),
        (dict(num_beams=5, num_beam_groups=3), "divisible"),
        (dict(temperature=0.0), "temperature"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=0), "top_k"),
        (dict(seq_len=80), "max_seq_len"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(num_beams=0, num_beam_groups=1), "num_beams"),
        (dict(seq_len=30.0), "seq_len must be an int"),
    ],
)
def test_decoding_config_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DecodingConfig(**kwargs)
    with pytest.raises(ValueError, match=message):
        generate(FakeModel(HashLM()), images(2), **kwargs)


def test_generate_rejects_bad_prompts_and_empty_batches() -> None:
    model = FakeModel(HashLM())
    with pytest.raises(ValueError, match="prompt must be"):
        generate(model, images(2), text=torch.tensor([[SOT], [SOT], [SOT]]))
    with pytest.raises(ValueError, match="seq_len"):
        generate(model, images(2), text=torch.full((12,), 3), seq_len=10)
    with pytest.raises(ValueError, match="empty batch"):
        generate(model, images(2)[:0])


def test_decode_runs_on_a_bare_decoder() -> None:
    lm = HashLM(seed=19)
    tokens = image_tokens(3)
    ids = decode(CachedDecoder(lm, tokens), torch.full((3, 1), SOT), DecodingConfig(), SPECIAL)
    assert ids.shape[0] == 3 and (ids[:, 0] == SOT).all()


# --- the real tiny model (coca_tiny, random weights) ---------------------------------------------


class EosWhenLogitsSay:
    """Wraps a real decoder so <end_of_text> wins at data-dependent steps: with random weights it
    would almost never win, and rows must finish at different steps to test the cache's reorder.
    The boost is a function of the step's own logits, so it keeps cached == uncached."""

    def __init__(self, decoder: object, eos: int) -> None:
        self.decoder, self.eos = decoder, eos

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.decoder.step(tokens).clone()  # (B, V)
        signal = logits[:, 100] - logits[:, 200] - 1.8
        logits[:, self.eos] = logits.max(dim=-1).values + 4.0 * signal
        return logits

    def reorder(self, rows: torch.Tensor) -> None:
        self.decoder.reorder(rows)


def special_tokens(model) -> SpecialTokens:
    cfg = model.config
    return SpecialTokens(sot=cfg.sot_token_id, eos=cfg.eot_token_id, pad=cfg.pad_token_id)


def assert_steps_match(
    reference, candidate, prompt: torch.Tensor, feed: torch.Tensor, steps: int,
    reorders: dict[int, list[int]],
) -> None:  # fmt: skip
    """Step two decoders of the same images in lockstep and compare their logits: the prompt,
    then `steps` one-token steps fed the reference's argmax; after step i both follow
    reorders[i] (row indices, which may duplicate, drop and permute rows)."""
    with torch.no_grad():
        assert torch.allclose(reference.step(prompt), candidate.step(prompt), atol=1e-5)
        for step in range(steps):
            a, b = reference.step(feed), candidate.step(feed)
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), f"step {step}"
            feed = a.argmax(dim=-1, keepdim=True)
            if step in reorders:
                rows = torch.tensor(reorders[step])
                reference.reorder(rows)
                candidate.reorder(rows)
                feed = feed[rows]


@pytest.mark.parametrize("generation_type", ["greedy", "beam_search"])
def test_tiny_model_cached_decoder_matches_full_prefix(tiny_model, generation_type: str) -> None:
    cfg = tiny_model.config
    special = SpecialTokens(sot=cfg.sot_token_id, eos=cfg.eot_token_id, pad=cfg.pad_token_id)
    pixels = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = tiny_model.encode_image_with_tokens(pixels).tokens
    config = DecodingConfig(
        generation_type=generation_type, seq_len=16, num_beams=4, num_beam_groups=2, min_seq_len=2
    )
    prompt = torch.full((6, 1), special.sot)
    cached = tiny_model.incremental_decoder(tokens, max_len=config.seq_len)
    uncached = tiny_model.full_prefix_decoder(tokens)
    with torch.no_grad():
        fast = decode(EosWhenLogitsSay(cached, special.eos), prompt, config, special)
        slow = decode(EosWhenLogitsSay(uncached, special.eos), prompt, config, special)
    assert torch.equal(fast, slow)
    lengths = [row.index(special.eos) + 1 if special.eos in row else 16 for row in fast.tolist()]
    assert len(set(lengths)) >= 3, "rows should finish at different steps"


def test_tiny_model_generate_runs_end_to_end(tiny_model) -> None:
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids = tiny_model.generate(pixels, seq_len=8, num_beams=2, num_beam_groups=1)
    tokens = tiny_model.encode_image_with_tokens(pixels).tokens
    cfg = tiny_model.config
    special = SpecialTokens(sot=cfg.sot_token_id, eos=cfg.eot_token_id, pad=cfg.pad_token_id)
    config = DecodingConfig(seq_len=8, num_beams=2, num_beam_groups=1)
    with torch.no_grad():
        slow = decode(
            tiny_model.full_prefix_decoder(tokens), torch.full((3, 1), special.sot), config, special
        )
    assert torch.equal(ids, slow)
    assert ids.shape == (3, 8) and (ids[:, 0] == special.sot).all()
