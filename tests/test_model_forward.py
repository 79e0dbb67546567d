"""Forward pass, input validation, loss, gradient checkpointing, and the KV-cached decoder."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from coca.loss import CocaLoss
from coca.model import CoCa
from tests.conftest import make_texts

SOT = 49406


def test_model_forward_shapes_and_teacher_forcing(tiny_model: CoCa) -> None:
    images = torch.randn(2, 3, 32, 32)
    texts = make_texts([6, 10], context=12)
    with torch.no_grad():
        out = tiny_model(images, texts)
    assert out.image_features.shape == out.text_features.shape == (2, 32)
    assert torch.allclose(out.image_features.norm(dim=-1), torch.ones(2))
    assert out.logits.shape == (2, 11, 49408)
    assert torch.equal(out.labels, texts[:, 1:])
    assert out.logit_scale.shape == () and out.logit_bias is None
    assert torch.allclose(out.logit_scale, torch.tensor(1 / 0.07))


def test_model_encode_image_with_tokens_matches_encode_image(tiny_model: CoCa) -> None:
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        encoding = tiny_model.encode_image_with_tokens(images)
        latent = tiny_model.encode_image(images)
    assert torch.equal(encoding.latent, latent)
    assert encoding.tokens.shape == (2, 5, 32)  # n_queries 6 -> 5 image tokens


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((0, 3, 32, 32), "empty batch"),
        ((2, 1, 32, 32), r"\(B, 3, 32, 32\)"),
        ((2, 3, 64, 64), "use model.preprocess"),
        ((3, 32, 32), r"\(B, 3, 32, 32\)"),
    ],
)
def test_model_encode_image_rejects_bad_input(tiny_model: CoCa, shape: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_model.encode_image(torch.zeros(shape))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (torch.zeros(0, 5, dtype=torch.long), "empty"),
        (torch.zeros(2, 77, dtype=torch.long), "context_length=76"),
        (torch.zeros(2, 5), "integer"),
        (torch.full((1, 5), 49408), "token ids must lie"),
    ],
)
def test_model_encode_text_rejects_bad_input(
    tiny_model: CoCa, text: torch.Tensor, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_model.encode_text(text)


def test_model_loss_matches_open_clip_coca_loss(tiny_model: CoCa) -> None:
    open_clip_loss = pytest.importorskip("open_clip.loss")
    images = torch.randn(3, 3, 32, 32)
    texts = make_texts([5, 8, 12], context=16)
    out = tiny_model(images, texts)
    ours = CocaLoss()(out)
    ref = open_clip_loss.CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0)(
        out.image_features, out.text_features, out.logits, out.labels, out.logit_scale
    )
    assert torch.allclose(ours.contrastive, ref[0]) and torch.allclose(ours.caption, ref[1])
    assert torch.allclose(ours.total, ref[0] + ref[1])


def test_model_caption_loss_ignores_padding(tiny_model: CoCa) -> None:
    loss = CocaLoss(contrastive_weight=0.0, caption_weight=1.0)
    logits = torch.randn(1, 4, 10)
    labels = torch.tensor([[3, 4, 0, 0]])
    changed = logits.clone()
    changed[0, 2:] = 100.0  # predictions at pad positions must not matter
    assert torch.allclose(loss.caption(logits, labels), loss.caption(changed, labels))


def test_model_grad_checkpointing_gives_same_gradients(tiny_config: Any) -> None:
    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = CoCa(tiny_config).train()
        model.set_grad_checkpointing(checkpointing)
        torch.manual_seed(1)
        out = model(torch.randn(2, 3, 32, 32), make_texts([5, 9], context=10))
        CocaLoss()(out).total.backward()
        return {k: p.grad for k, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 50
    for key in plain:
        assert torch.allclose(plain[key], checkpointed[key], atol=1e-6), key


# --- incremental decoding -------------------------------------------------------------------


def assert_same_logits(cached: torch.Tensor, full: torch.Tensor) -> None:
    assert cached.shape == full.shape
    scale = full.abs().max()
    assert float((cached - full).abs().max() / scale) < 1e-5
    assert torch.equal(cached.argmax(-1), full.argmax(-1))


def run_both(model: CoCa, plan: list[torch.Tensor | None], images: int = 3) -> Any:
    """Step the cached and the uncached decoder in lockstep; reorder with plan entries."""
    torch.manual_seed(5)
    tokens = model.encode_image_with_tokens(torch.randn(images, 3, 32, 32)).tokens
    cached = model.incremental_decoder(tokens, max_len=24)
    full = model.full_prefix_decoder(tokens)
    prompt = torch.tensor([[SOT, 320, 0], [SOT, 1929, 539], [SOT, 0, 7]])[:images]
    assert_same_logits(cached.step(prompt), full.step(prompt))  # 3-token prompt, "!" = pad id
    g = torch.Generator().manual_seed(6)
    for rows in plan:
        if rows is not None:
            cached.reorder(rows)
            full.reorder(rows)
        step = torch.randint(0, 600, (cached.batch, 1), generator=g)
        assert_same_logits(cached.step(step), full.step(step))
    return cached


def test_incremental_decoder_matches_full_prefix_step_by_step(tiny_model: CoCa) -> None:
    run_both(tiny_model, [None, None, None, None])


def test_incremental_decoder_matches_after_beam_reorders(tiny_model: CoCa) -> None:
    beams = torch.arange(3).repeat_interleave(4)  # 4 beams per image
    swap = torch.tensor([1, 1, 0, 2, 4, 7, 6, 6, 11, 8, 8, 9])  # duplicate/drop within an image
    cached = run_both(tiny_model, [beams, None, swap, swap, None])
    assert cached._rows_per_image == 4  # beams of an image share one copy of its K/V
    assert cached._cross_kv[0][0].shape[0] == 3


def test_incremental_decoder_matches_after_dropping_rows(tiny_model: CoCa) -> None:
    beams = torch.arange(3).repeat_interleave(2)
    drop_image_0 = torch.tensor([2, 3, 4, 5])
    out_of_order = torch.tensor([3, 0, 2])  # rows of images 2, 1, 1
    interleaved = torch.tensor([0, 1, 2, 0])  # images 2, 1, 1, 2: needs per-row K/V
    cached = run_both(tiny_model, [beams, drop_image_0, None, out_of_order, interleaved, None])
    assert cached._rows_per_image is None


def test_incremental_decoder_grows_past_initial_rows(tiny_model: CoCa) -> None:
    many = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2])  # uneven: 3, 3, 6 rows
    run_both(tiny_model, [many, None, torch.arange(12).flip(0)])


def test_incremental_decoder_all_rows_dropped(tiny_model: CoCa) -> None:
    cached = run_both(tiny_model, [None])
    cached.reorder(torch.zeros(0, dtype=torch.long))
    assert cached.step(torch.zeros(0, 1, dtype=torch.long)).shape == (0, 49408)


def test_incremental_decoder_rejects_bad_use(tiny_model: CoCa) -> None:
    tokens = tiny_model.encode_image_with_tokens(torch.randn(2, 3, 32, 32)).tokens
    decoder = tiny_model.incremental_decoder(tokens, max_len=3)
    with pytest.raises(ValueError, match="rows"):
        decoder.step(torch.full((3, 1), SOT))
    decoder.step(torch.full((2, 2), SOT))
    with pytest.raises(ValueError, match="max_len=3"):
        decoder.step(torch.full((2, 2), SOT))
    with pytest.raises(ValueError, match="row indices"):
        decoder.reorder(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="max_len"):
        tiny_model.incremental_decoder(tokens, max_len=77)
    with pytest.raises(ValueError, match="image_tokens"):
        tiny_model.incremental_decoder(tokens[..., :8])


def test_incremental_decoder_bfloat16_follows_fp32(tiny_model: CoCa) -> None:
    """Low precision keeps its caches in the model dtype and stays close to fp32."""
    images = torch.randn(2, 3, 32, 32)
    prompt = torch.tensor([[SOT, 320], [SOT, 539]])
    with torch.no_grad():
        ref = tiny_model.incremental_decoder(tiny_model.encode_image_with_tokens(images).tokens)
        expected = ref.step(prompt)
        tiny_model.to(torch.bfloat16)
        tokens = tiny_model.encode_image_with_tokens(images.bfloat16()).tokens
        got = tiny_model.incremental_decoder(tokens).step(prompt)
    assert got.dtype == torch.bfloat16
    assert float((got.float() - expected).abs().max() / expected.abs().max()) < 5e-2


def test_incremental_decoder_under_autocast_caches_in_autocast_dtype(tiny_model: CoCa) -> None:
    """fp32 weights under bf16 autocast (the GPU indexer's mode): caches take the autocast dtype,
    prompt and one-token steps run, and the logits stay close to fp32."""
    images = torch.randn(2, 3, 32, 32)
    prompt = torch.tensor([[SOT, 320], [SOT, 539]])
    with torch.no_grad():
        tokens = tiny_model.encode_image_with_tokens(images).tokens
        ref = tiny_model.incremental_decoder(tokens)
        ref.step(prompt)
        expected = ref.step(torch.tensor([[7], [8]]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            decoder = tiny_model.incremental_decoder(tokens)
            decoder.step(prompt)
            got = decoder.step(torch.tensor([[7], [8]]))
    assert decoder._text_kv.dtype == torch.bfloat16
    assert float((got.float() - expected).abs().max() / expected.abs().max()) < 5e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_incremental_decoder_cuda_graphs_match_eager(tiny_config: Any) -> None:
    torch.manual_seed(0)
    model = CoCa(tiny_config).eval().cuda()
    tokens = model.encode_image_with_tokens(torch.randn(3, 3, 32, 32, device="cuda")).tokens
    graphed = model.incremental_decoder(tokens, max_len=20, cuda_graphs=True)
    eager = model.incremental_decoder(tokens, max_len=20, cuda_graphs=False)
    beams = torch.arange(3).repeat_interleave(2)
    g = torch.Generator().manual_seed(2)
    for step in range(12):
        if step == 1:
            graphed.reorder(beams)
            eager.reorder(beams)
        elif step in (5, 9):  # same layout: graphs must survive the in-place reorder
            swap = torch.tensor([1, 1, 2, 3, 5, 4])
            graphed.reorder(swap)
            eager.reorder(swap)
        ids = torch.randint(0, 600, (graphed.batch, 1), generator=g).cuda()
        assert torch.allclose(graphed.step(ids), eager.step(ids), atol=1e-4)
    assert graphed._graphs._graphs  # a graph was captured and replayed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_incremental_decoder_cuda_graphs_under_autocast_match_eager(tiny_config: Any) -> None:
    """bf16 autocast (the GPU indexer's mode) replays captured graphs too, with eager's logits."""
    torch.manual_seed(0)
    model = CoCa(tiny_config).eval().cuda()
    tokens = model.encode_image_with_tokens(torch.randn(3, 3, 32, 32, device="cuda")).tokens
    g = torch.Generator().manual_seed(3)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        graphed = model.incremental_decoder(tokens, max_len=20, cuda_graphs=True)
        eager = model.incremental_decoder(tokens, max_len=20, cuda_graphs=False)
        for _ in range(8):
            ids = torch.randint(0, 600, (3, 1), generator=g).cuda()
            got, expected = graphed.step(ids).float(), eager.step(ids).float()
            assert torch.allclose(got, expected, atol=1e-2, rtol=1e-2)
    assert graphed._graphs._graphs  # captured under autocast, then replayed
