"""The lean CPU one-token step (coca.cpu_step) inside CachedDecoder, against the eager in-place
step and the uncached full-prefix decoder."""

from __future__ import annotations

import pytest
import torch

from coca import cpu_step
from coca.generate import DecodingConfig, decode
from coca.incremental import CachedDecoder
from tests.test_generate import EosWhenLogitsSay, assert_steps_match, special_tokens


class HostEos(EosWhenLogitsSay):
    """EosWhenLogitsSay that keeps the wrapped decoder's runs_on_host (the no-lag greedy loop)."""

    @property
    def runs_on_host(self) -> bool:
        return self.decoder.runs_on_host


def eager_decoder(model, tokens: torch.Tensor, max_len: int) -> CachedDecoder:
    decoder = CachedDecoder(model.text, model.text_decoder, tokens, max_len, False, None)
    decoder._host, decoder.runs_on_host = None, False  # the fixed-shape in-place step
    return decoder


def test_cpu_step_is_used_for_float32_cpu_models_only(tiny_model) -> None:
    tokens = tiny_model.encode_image_with_tokens(torch.randn(2, 3, 32, 32)).tokens
    assert tiny_model.incremental_decoder(tokens, max_len=8).runs_on_host
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not tiny_model.incremental_decoder(tokens, max_len=8).runs_on_host


def test_cpu_step_logits_match_the_in_place_step(tiny_model) -> None:
    """Pad tokens in the prompt and fed later (open_clip's legacy mask), then a reorder that
    duplicates and drops rows (rows out of image order), then beams of one image in runs."""
    special = special_tokens(tiny_model)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    tokens = tiny_model.encode_image_with_tokens(pixels).tokens
    eager = eager_decoder(tiny_model, tokens, 12)
    lean = tiny_model.incremental_decoder(tokens, max_len=12)
    prompt = torch.tensor([[special.sot, 5, special.pad], [special.sot, 7, 8], [special.sot, 9, 3]])
    feed = torch.tensor([[4], [special.pad], [6]])
    reorders = {1: [2, 0, 0], 3: [0, 0, 1, 1, 2, 2]}  # out of image order, then runs of beams
    assert_steps_match(eager, lean, prompt, feed, 7, reorders)


def test_cpu_step_starts_at_slot_zero_like_the_in_place_step(tiny_model) -> None:
    tokens = tiny_model.encode_image_with_tokens(torch.randn(2, 3, 32, 32)).tokens
    eager = eager_decoder(tiny_model, tokens, 6)
    lean = tiny_model.incremental_decoder(tokens, max_len=6)
    feed = torch.full((2, 1), special_tokens(tiny_model).sot)
    with torch.no_grad():
        for _ in range(5):
            a, b = eager.step(feed), lean.step(feed)
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
            feed = a.argmax(dim=-1, keepdim=True)


@pytest.mark.parametrize("generation_type", ["greedy", "beam_search", "top_k"])
def test_cpu_step_decodes_the_same_tokens_as_the_full_prefix(
    tiny_model, generation_type: str
) -> None:
    """Rows finish at different steps; greedy reads the finished flags without the lag."""
    special = special_tokens(tiny_model)
    pixels = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = tiny_model.encode_image_with_tokens(pixels).tokens
    config = DecodingConfig(
        generation_type=generation_type,
        seq_len=16,
        num_beams=4,
        num_beam_groups=2,
        min_seq_len=2,
        top_k=2,
    )
    prompt = torch.full((6, 1), special.sot)
    fast_decoder = HostEos(tiny_model.incremental_decoder(tokens, max_len=16), special.eos)
    assert fast_decoder.runs_on_host
    with torch.no_grad():
        fast = decode(fast_decoder, prompt, config, special, generator=torch.Generator())
        slow_decoder = EosWhenLogitsSay(tiny_model.full_prefix_decoder(tokens), special.eos)
        slow = decode(slow_decoder, prompt, config, special, generator=torch.Generator())
    assert torch.equal(fast, slow)
    lengths = [row.index(special.eos) + 1 if special.eos in row else 16 for row in fast.tolist()]
    assert len(set(lengths)) >= 3, "rows should finish at different steps"


def test_host_weights_are_reused_and_follow_parameter_updates() -> None:
    from coca.config import get_config
    from coca.model import CoCa

    torch.manual_seed(1)
    model = CoCa(get_config("coca_tiny")).eval()
    first = cpu_step.host_weights(model.text, model.text_decoder)
    assert cpu_step.host_weights(model.text, model.text_decoder) is first
    fc = model.text_decoder.resblocks[0].mlp.c_fc.weight
    with torch.no_grad():
        fc.add_(1.0)  # an optimizer step: same storage, new version
    updated = cpu_step.host_weights(model.text, model.text_decoder)
    assert updated is not first
    assert torch.equal(updated.self_blocks[0].fc.float(), fc.detach().t())


def test_weights_are_stored_half_only_when_that_is_exact() -> None:
    exact = torch.randn(8, 4).half().float()
    assert cpu_step._transposed(exact).dtype == torch.float16
    assert torch.equal(cpu_step._transposed(exact).float(), exact.t())
    inexact = exact + 1e-6
    assert cpu_step._transposed(inexact).dtype == torch.float32
    x, bias = torch.randn(3, 4), torch.randn(8)  # exact is (out 8, in 4)
    assert torch.equal(
        cpu_step._matmul(bias, x, cpu_step._transposed(exact)),
        torch.addmm(bias, x, exact.t().contiguous()),  # widening float16 is exact
    )


def test_cpu_step_runs_under_inference_mode_then_no_grad() -> None:
    """Per-thread scratch buffers made under inference_mode must stay writable afterwards."""
    from coca.config import get_config
    from coca.model import CoCa

    torch.manual_seed(3)
    model = CoCa(get_config("coca_tiny")).half().float().eval()  # float16-exact, as bundles
    packed = cpu_step.host_weights(model.text, model.text_decoder)
    assert packed.text_blocks[0].fc.dtype == torch.float16  # so products use the scratch buffers
    cpu_step._SCRATCH.__dict__.clear()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    kwargs = {"generation_type": "greedy", "seq_len": 8, "min_seq_len": 2}
    with torch.inference_mode():
        first = model.generate(pixels, **kwargs)
    with torch.no_grad():
        again = model.generate(pixels, **kwargs)
    assert torch.equal(first, again)
