"""One caption decoder reused batch after batch (coca.caption_engine, CachedDecoder.reset) gives
the tokens of a fresh decoder per batch, in buffers that keep their addresses (so captured CUDA
graphs stay valid)."""

from __future__ import annotations

import pytest
import torch

from coca import cpu_step
from coca.caption_engine import CaptionEngine, decode_greedy_fixed
from coca.checkpoint import DEFAULT_MODEL_DIR
from coca.generate import DecodingConfig, generate_from_tokens
from coca.step_graphs import captured_graph_count
from tests.test_generate import special_tokens

GREEDY = DecodingConfig(generation_type="greedy", seq_len=12, min_seq_len=1)
# Seeded tiny model (conftest): its greedy captions often repeat this token; an <end_of_text>
# column just above it makes rows end at data-dependent steps (random weights never end).
EOS_LIKE_TOKEN, EOS_SCALE = 40605, 1.1


@pytest.fixture()
def ending_model(tiny_model):  # noqa: ANN001, ANN201 - coca.model.CoCa
    with torch.no_grad():
        projection = tiny_model.text_decoder.text_projection  # (D, V)
        projection[:, tiny_model.config.eot_token_id] = projection[:, EOS_LIKE_TOKEN] * EOS_SCALE
    return tiny_model


def image_tokens(model, count: int, seed: int = 0) -> torch.Tensor:  # noqa: ANN001
    pixels = torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.encode_image_with_tokens(pixels.to(model.device)).tokens  # (B, N, D)


def caption_lengths(ids: torch.Tensor, eos: int) -> list[int]:
    return [row.index(eos) + 1 if eos in row else len(row) for row in ids.tolist()]


def engine_for(model, mode: str, monkeypatch: pytest.MonkeyPatch) -> CaptionEngine:  # noqa: ANN001
    """host: float32 CPU step, rows dropped as they finish (the CPU indexer); fixed: the same
    step, no rows dropped; in_place: the fixed-shape step that CUDA graphs capture."""
    if mode == "in_place":
        monkeypatch.setattr(cpu_step, "supports", lambda *args: False)
    engine = CaptionEngine(model, GREEDY)
    engine.fixed_length = {"host": None, "fixed": True, "in_place": None}[mode]
    return engine


@pytest.mark.parametrize("mode", ["host", "fixed", "in_place"])
def test_reused_decoder_decodes_like_a_fresh_decoder_per_batch(
    ending_model, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = image_tokens(ending_model, 12)
    engine = engine_for(ending_model, mode, monkeypatch)
    lengths: set[int] = set()
    for start, end in ((0, 5), (5, 10), (10, 12)):  # the last batch is smaller
        got = engine.generate(tokens[start:end])
        expected = generate_from_tokens(ending_model, tokens[start:end], GREEDY)
        assert torch.equal(got, expected), f"batch {start}:{end}"
        lengths |= set(caption_lengths(expected, ending_model.config.eot_token_id))
    assert len(lengths) >= 3, "rows should finish at different steps"
    # Fixed-length decoders pad the last batch up to their rows; host ones get a decoder of its own.
    assert engine.decoders_built == (2 if mode == "host" else 1)
    assert engine.batches == 3


def test_reset_keeps_every_buffer_address_and_clears_the_state(ending_model) -> None:
    special = special_tokens(ending_model)
    first, second = image_tokens(ending_model, 4, seed=1), image_tokens(ending_model, 4, seed=2)
    decoder = ending_model.incremental_decoder(first, max_len=GREEDY.seq_len)
    buffers = [decoder._text_kv, decoder._dec_kv, decoder._key_valid, decoder._last_token]
    buffers += [decoder._position, *(t for kv in decoder._cross_kv for t in kv)]
    addresses = [b.data_ptr() for b in buffers]
    with torch.no_grad():
        decoder.step(torch.full((4, 1), special.sot))
        decoder.step(torch.tensor([[5], [special.pad], [7], [8]]))
        decoder.reorder(torch.tensor([0, 2]))  # drops rows: the cross K/V move to a gathered copy
        decoder.reset(second)
    kv_after = [t for kv in decoder._cross_kv for t in kv]
    after = [decoder._text_kv, decoder._dec_kv, decoder._key_valid, decoder._last_token]
    assert [b.data_ptr() for b in [*after, decoder._position, *kv_after]] == addresses
    assert decoder.length == 0 and decoder.batch == 4 and int(decoder._position) == 0
    assert not decoder._key_valid.any() and not decoder._text_kv.any()
    assert decoder._rows_per_image == 1


@pytest.mark.parametrize("in_place", [False, True])
def test_reset_decoder_steps_like_a_fresh_one(
    ending_model, in_place: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a batch that reordered rows, a reset decoder gives a fresh decoder's logits."""
    if in_place:
        monkeypatch.setattr(cpu_step, "supports", lambda *args: False)
    special = special_tokens(ending_model)
    first, second = image_tokens(ending_model, 3, seed=3), image_tokens(ending_model, 3, seed=4)
    reused = ending_model.incremental_decoder(first, max_len=8)
    with torch.no_grad():
        reused.step(torch.full((3, 1), special.sot))
        reused.reorder(torch.tensor([2, 0]))
        reused.step(torch.tensor([[9], [special.pad]]))
        reused.reset(second)
        fresh = ending_model.incremental_decoder(second, max_len=8)
        feed = torch.full((3, 1), special.sot)
        for step in range(6):
            got, expected = reused.step(feed), fresh.step(feed)
            assert torch.equal(got, expected), f"step {step}"
            feed = expected.argmax(dim=-1, keepdim=True)
            if step == 2:
                feed[1] = special.pad  # a pad mid-caption: open_clip's shifted pad mask


def test_reset_rejects_another_batch_size(ending_model) -> None:
    decoder = ending_model.incremental_decoder(image_tokens(ending_model, 3), max_len=8)
    with pytest.raises(ValueError, match="holds 3"):
        decoder.reset(image_tokens(ending_model, 2))


class CountingDecoder:
    def __init__(self, decoder) -> None:  # noqa: ANN001 - CachedDecoder
        self.decoder, self.steps = decoder, 0

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        return self.decoder.step(tokens)


def test_fixed_length_greedy_stops_soon_after_every_row_ended(ending_model) -> None:
    special = special_tokens(ending_model)
    config = DecodingConfig(generation_type="greedy", seq_len=30, min_seq_len=1)
    tokens = image_tokens(ending_model, 12)[[1, 2, 3, 4, 6, 9, 10]]  # rows that end early
    decoder = CountingDecoder(ending_model.incremental_decoder(tokens, max_len=30))
    prompt = torch.full((7, 1), special.sot)
    with torch.no_grad():
        ids = decode_greedy_fixed(decoder, prompt, config, special, poll_every=3)
    assert torch.equal(ids, generate_from_tokens(ending_model, tokens, config))
    longest = max(caption_lengths(ids, special.eos))
    assert longest < 20, "the test needs every row to end well before seq_len"
    # Flags are read every 3 steps, a step behind: at most 3 + 1 steps past the longest caption.
    assert longest - 1 <= decoder.steps <= longest - 1 + 4


def test_engine_passes_beam_search_and_sampling_through(ending_model) -> None:
    tokens = image_tokens(ending_model, 3)
    beam = DecodingConfig(seq_len=10, num_beams=2, num_beam_groups=1, min_seq_len=1)
    engine = CaptionEngine(ending_model, beam)
    assert torch.equal(engine.generate(tokens), generate_from_tokens(ending_model, tokens, beam))
    top_k = DecodingConfig(generation_type="top_k", top_k=5, seq_len=10, min_seq_len=1)
    sampler = CaptionEngine(ending_model, top_k)
    torch.manual_seed(5)  # the global generator draws the samples in both calls
    sampled = sampler.generate(tokens)
    torch.manual_seed(5)
    assert torch.equal(sampled, generate_from_tokens(ending_model, tokens, top_k))
    assert engine.decoders_built == sampler.decoders_built == 0


@pytest.mark.slow
@pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / "config.json").is_file(), reason="the default model is not installed"
)
def test_default_model_reused_decoder_captions_generated_scenes_like_fresh_decoders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import coca
    from coca.world import render_scene, scene_for_seed

    model = coca.load("default")
    pixels = torch.stack(
        [model.preprocess(render_scene(scene_for_seed(2000 + i), 160, 120)) for i in range(21)]
    )
    config = DecodingConfig(generation_type="greedy", seq_len=20)
    monkeypatch.setattr(cpu_step, "supports", lambda *args: False)  # the step CUDA graphs replay
    engine = CaptionEngine(model, config)
    lengths: set[int] = set()
    with torch.inference_mode():  # as the indexer runs
        tokens = model.encode_image_with_tokens(pixels).tokens
        for start, end in ((0, 8), (8, 16), (16, 21)):
            expected = generate_from_tokens(model, tokens[start:end], config)
            assert torch.equal(engine.generate(tokens[start:end]), expected)
            lengths |= set(caption_lengths(expected, model.config.eot_token_id))
    assert len(lengths) >= 3 and engine.decoders_built == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("autocast", [False, True])
def test_engine_captures_one_cuda_graph_for_a_whole_run(ending_model, autocast: bool) -> None:
    model = ending_model.cuda()
    tokens = image_tokens(model, 11)
    engine = CaptionEngine(model, GREEDY)
    before = captured_graph_count()
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=autocast):
        got = [engine.generate(tokens[start : start + 4]) for start in (0, 4, 8)]
        captured = captured_graph_count() - before
        if not autocast:  # bf16 logits may break near-ties differently at another batch size
            for start, ids in zip((0, 4, 8), got, strict=True):
                expected = generate_from_tokens(model, tokens[start : start + 4], GREEDY)
                assert torch.equal(ids.cpu(), expected.cpu())
    assert captured == 1 and engine.decoders_built == 1
