"""The encoder runs one vision pass per batch for both the embedding and the caption."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import coca
from coca import model_identity
from indexer.encode import BatchEncoder, EncodeConfig, resolve_device
from tests.indexer_support import fast_decoding, save_tiny_bundle


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    torch.set_num_threads(1)
    return coca.load(save_tiny_bundle(tmp_path_factory.mktemp("encode_bundle")))


def _images(count: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # Channel-last memory seen as (3, S, S), the way the decoder hands images over.
    return [
        torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=generator).permute(
            2, 0, 1
        )
        for _ in range(count)
    ]


def test_encode_runs_the_vision_tower_once_per_batch(
    tiny_model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = tiny_model.encode_image_with_tokens

    def counted(images: torch.Tensor):  # noqa: ANN202 - coca.ImageEncoding
        calls.append(images.shape[0])
        return original(images)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the image was encoded a second time")

    monkeypatch.setattr(tiny_model, "encode_image_with_tokens", counted)
    monkeypatch.setattr(tiny_model, "encode_image", forbidden)
    encoder = BatchEncoder(tiny_model, EncodeConfig(decoding=fast_decoding()))
    encoded = encoder.encode(_images(5, 32))
    assert calls == [5]
    assert encoded.embeddings.shape == (5, tiny_model.config.embed_dim)
    assert encoded.captions is not None and len(encoded.captions) == 5
    assert np.allclose(np.linalg.norm(encoded.embeddings, axis=1), 1.0, atol=1e-5)


def test_encode_matches_the_model_and_ignores_batch_size(tiny_model: torch.nn.Module) -> None:
    images = _images(4, 32, seed=1)
    encoder = BatchEncoder(tiny_model, EncodeConfig(decoding=fast_decoding()))
    together = encoder.encode(images)
    alone = [encoder.encode([image]) for image in images]
    assert np.allclose(
        together.embeddings, np.concatenate([a.embeddings for a in alone]), atol=1e-5
    )
    assert together.captions == [a.captions[0] for a in alone]
    with torch.inference_mode():
        batch = torch.stack([image.contiguous() for image in images])
        expected = tiny_model.encode_image(tiny_model.preprocess.batch(batch)).numpy()
    assert np.allclose(together.embeddings, expected, atol=1e-6)


def test_encode_ids_leaves_the_text_for_later_and_with_texts_gives_encodes_captions(
    tiny_model: torch.nn.Module,
) -> None:
    images = _images(3, 32, seed=2)
    encoder = BatchEncoder(tiny_model, EncodeConfig(decoding=fast_decoding()))
    pending = encoder.encode_ids(images)
    assert pending.captions is None
    assert pending.caption_ids is not None and pending.caption_ids.device.type == "cpu"
    assert pending.caption_ids.shape[0] == 3
    done = encoder.with_texts(pending)
    assert done.caption_ids is None
    assert done.captions == encoder.encode(images).captions
    assert np.array_equal(done.embeddings, pending.embeddings)
    no_captions = BatchEncoder(tiny_model, EncodeConfig(captions=False))
    plain = no_captions.encode_ids(images)
    assert plain.caption_ids is None and no_captions.with_texts(plain) is plain


def test_encode_without_captions(tiny_model: torch.nn.Module) -> None:
    encoded = BatchEncoder(tiny_model, EncodeConfig(captions=False)).encode(_images(2, 32))
    assert encoded.captions is None


def test_encode_model_identity_follows_weights_not_dtype(tmp_path: Path) -> None:
    first = coca.load(save_tiny_bundle(tmp_path / "a", seed=0))
    same = coca.load(tmp_path / "a", dtype=torch.bfloat16)
    other = coca.load(save_tiny_bundle(tmp_path / "b", seed=1))
    assert model_identity(first) == model_identity(same)
    assert model_identity(first).config_hash != model_identity(other).config_hash
    assert model_identity(first).embed_dim == first.config.embed_dim


def test_encode_device_choice() -> None:
    assert resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_encode_bf16_weights_take_bf16_inputs_and_report_times(tmp_path: Path) -> None:
    bundle = save_tiny_bundle(tmp_path / "bundle")
    images = _images(3, 32, seed=2)
    config = EncodeConfig(decoding=fast_decoding())
    full = BatchEncoder(coca.load(bundle), config).encode(images)
    half = BatchEncoder(coca.load(bundle, dtype=torch.bfloat16), config).encode(images)
    assert half.embeddings.dtype == np.float32 and half.embeddings.shape == full.embeddings.shape
    similarity = (half.embeddings * full.embeddings).sum(axis=1)  # both L2-normalised
    assert similarity.min() > 0.98
    assert half.captions is not None and len(half.captions) == 3
    # On a CPU the device time is the wall time; on CUDA it comes from events around the model.
    assert half.device_seconds == half.gpu_seconds > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="photos on the GPU need a GPU")
def test_encode_takes_photos_on_the_gpu_mixed_with_cpu_ones(tmp_path: Path) -> None:
    """GPU-decoded photos (views of decoded chunks) and Pillow's CPU photos in one batch give
    what the same photos all on the CPU give."""
    model = coca.load(save_tiny_bundle(tmp_path), device="cuda")
    size = model.preprocess.image_size
    images = _images(7, size)
    chunk = torch.stack([image.permute(1, 2, 0) for image in images[:4]]).cuda()  # (4, S, S, 3)
    on_gpu = list(chunk.permute(0, 3, 1, 2).unbind(0))
    mixed = [on_gpu[0], images[4], on_gpu[1], on_gpu[2], images[5], on_gpu[3], images[6]]
    order = [0, 4, 1, 2, 5, 3, 6]
    config = EncodeConfig(batch_size=8, decoding=fast_decoding(), autocast=False)
    encoder = BatchEncoder(model, config)
    got = encoder.encode(mixed)
    expected = encoder.encode([images[i] for i in order])
    np.testing.assert_allclose(got.embeddings, expected.embeddings, atol=1e-5)
    assert got.captions == expected.captions
    all_gpu = encoder.encode(on_gpu)
    np.testing.assert_allclose(all_gpu.embeddings, expected.embeddings[[0, 2, 3, 5]], atol=1e-5)
