"""The pure one-token step (coca.fused_step), eager and traced by torch.compile, against the
cached decoder's in-place step and the uncached full-prefix decoder."""

from __future__ import annotations

import pytest
import torch

from coca.fused_step import compiled_one_token_step, one_token_step
from coca.generate import DecodingConfig, decode
from coca.incremental import CachedDecoder
from tests.test_generate import EosWhenLogitsSay, assert_steps_match, special_tokens


def decoder_with(model, tokens: torch.Tensor, max_len: int, step) -> CachedDecoder:
    decoder = CachedDecoder(model.text, model.text_decoder, tokens, max_len, False, step)
    if step is None:  # the fixed-shape in-place step, not the CPU's lean step (coca.cpu_step)
        decoder._host, decoder.runs_on_host = None, False
    return decoder


def test_fused_step_logits_match_the_in_place_step(tiny_model) -> None:
    """Step by step, with a pad token in the prompt (open_clip's legacy mask) and a reorder
    that duplicates and drops rows (rows out of image order)."""
    special = special_tokens(tiny_model)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    tokens = tiny_model.encode_image_with_tokens(pixels).tokens
    prompt = torch.tensor([[special.sot, 5, special.pad], [special.sot, 7, 8], [special.sot, 9, 3]])
    eager, fused = (decoder_with(tiny_model, tokens, 10, f) for f in (None, one_token_step))
    feed = torch.tensor([[4], [special.pad], [6]])
    # after step 1: image 2 first, image 0 twice, image 1 gone
    assert_steps_match(eager, fused, prompt, feed, 5, {1: [2, 0, 0]})


@pytest.mark.parametrize("generation_type", ["greedy", "beam_search"])
@pytest.mark.parametrize("variant", ["eager", "traced"])
def test_fused_step_decodes_the_same_tokens_as_the_full_prefix(
    tiny_model, generation_type: str, variant: str
) -> None:
    """Rows finish at different steps, so greedy drops rows and beam search drops images: the
    traced variant (torch.compile with fullgraph=True, so any graph break fails) must follow."""
    special = special_tokens(tiny_model)
    step = one_token_step if variant == "eager" else compiled_one_token_step("eager")
    pixels = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = tiny_model.encode_image_with_tokens(pixels).tokens
    config = DecodingConfig(
        generation_type=generation_type, seq_len=16, num_beams=4, num_beam_groups=2, min_seq_len=2
    )
    prompt = torch.full((6, 1), special.sot)
    with torch.no_grad():
        fast = decode(
            EosWhenLogitsSay(decoder_with(tiny_model, tokens, 16, step), special.eos),
            prompt,
            config,
            special,
        )
        slow = decode(
            EosWhenLogitsSay(tiny_model.full_prefix_decoder(tokens), special.eos),
            prompt,
            config,
            special,
        )
    assert torch.equal(fast, slow)
    lengths = [row.index(special.eos) + 1 if special.eos in row else 16 for row in fast.tolist()]
    assert len(set(lengths)) >= 3, "rows should finish at different steps"


def test_model_compile_switch_selects_the_compiled_step(tiny_model) -> None:
    tokens = tiny_model.encode_image_with_tokens(torch.zeros(1, 3, 32, 32)).tokens
    assert tiny_model.incremental_decoder(tokens)._fused_step is None
    compiled = tiny_model.incremental_decoder(tokens, compile_step=True)
    assert compiled._fused_step is compiled_one_token_step()
    tiny_model.decode_compiled = True
    try:
        assert tiny_model.incremental_decoder(tokens)._fused_step is compiled_one_token_step()
    finally:
        tiny_model.decode_compiled = False
