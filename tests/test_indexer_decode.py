"""The decoder turns every kind of file into either a (3, S, S) image or a recorded error."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coca.preprocess import Preprocess, PreprocessConfig
from indexer.decode import DecodeConfig, decode_all, decode_image, decode_or_error
from tests.indexer_support import (
    BLUE,
    RED,
    make_bad_corpus,
    noise_image,
    rotated_jpeg_bytes,
    write_library,
)

CONFIG = DecodeConfig(image_size=32, workers=2)


def _close(pixel: torch.Tensor, color: tuple[int, int, int], tolerance: int = 40) -> bool:
    return bool((pixel.int() - torch.tensor(color)).abs().max() <= tolerance)


def test_decode_bad_corpus_records_errors_and_decodes_the_rest(tmp_path: Path) -> None:
    corpus = make_bad_corpus(tmp_path)
    assert len(corpus) >= 15
    results = list(decode_all([tmp_path / item.relative_path for item in corpus], CONFIG))
    assert [result.path.name for result in results] == [Path(i.relative_path).name for i in corpus]
    for item, result in zip(corpus, results, strict=True):
        if item.decodes:
            assert result.error is None, f"{item.relative_path}: {result.error}"
            assert result.image is not None
            assert result.image.pixels.shape == (3, 32, 32)
            assert result.image.pixels.dtype == torch.uint8
        else:
            assert result.image is None, item.relative_path
            assert result.error, item.relative_path


def test_decode_exif_rotation_is_applied_and_metadata_read(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    path.write_bytes(rotated_jpeg_bytes())
    image = decode_image(path, CONFIG)
    assert (image.width, image.height) == (20, 40)
    assert _close(image.pixels[:, 2, 16], RED)  # top row of the upright photo is red
    assert _close(image.pixels[:, 29, 16], BLUE)
    assert image.camera == "Acme Snapper 3"
    assert image.taken_at is not None and image.taken_at.isoformat() == "2021-05-06T07:08:09"
    assert image.format == "JPEG"


def test_decode_special_modes_become_sensible_rgb(tmp_path: Path) -> None:
    make_bad_corpus(tmp_path)
    grey = decode_image(tmp_path / "sixteen_bit.png", CONFIG).pixels
    assert 110 <= int(grey.float().mean()) <= 145  # 16-bit mid grey stays mid grey, not white
    palette = decode_image(tmp_path / "palette_transparent.png", CONFIG).pixels
    assert _close(palette[:, 16, 2], RED)
    assert _close(palette[:, 16, 29], (255, 255, 255))  # transparency flattened onto white
    gif = decode_image(tmp_path / "animated.gif", CONFIG).pixels
    assert _close(gif[:, 16, 16], RED)  # the first frame
    cmyk = decode_image(tmp_path / "cmyk.jpg", CONFIG)
    assert cmyk.pixels.shape == (3, 32, 32)
    panorama = decode_image(tmp_path / "panorama.png", CONFIG)
    assert (panorama.width, panorama.height) == (20_000, 3)


def test_decode_pixel_limit_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (1200, 1000), RED).save(path)
    result = decode_or_error(path, DecodeConfig(image_size=32, max_pixels=1_000_000))
    assert result.image is None and "limit" in (result.error or "")


def test_decode_unreadable_file_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "locked.jpg"
    noise_image((16, 16), 3).save(path)
    if os.geteuid() != 0:
        path.chmod(0)
    else:  # root reads mode-000 files, so make the open fail the way it would for a user
        original_open = Image.open

        def refuse(target, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            if Path(target).name == "locked.jpg":
                raise PermissionError(13, "Permission denied", str(target))
            return original_open(target, *args, **kwargs)

        monkeypatch.setattr(Image, "open", refuse)
    result = decode_or_error(path, CONFIG)
    assert result.image is None
    assert "Permission denied" in (result.error or "")


def test_decode_all_keeps_input_order_with_many_workers(tmp_path: Path) -> None:
    paths = write_library(tmp_path, 40)
    results = list(decode_all(paths, DecodeConfig(image_size=16, workers=4, prefetch=3)))
    assert [result.path for result in results] == paths
    assert all(result.image is not None for result in results)


def test_decode_draft_mode_matches_full_decode(tmp_path: Path) -> None:
    path = tmp_path / "large.jpg"
    image = Image.radial_gradient("L").resize((1600, 1200)).convert("RGB")
    image.save(path, quality=92)
    drafted = decode_image(path, DecodeConfig(image_size=224)).pixels.float()
    full = decode_image(path, DecodeConfig(image_size=224, use_draft=False)).pixels.float()
    assert (drafted - full).abs().mean() < 3.0


def _photo_like_rotated_jpeg(path: Path) -> None:
    """1024x768 with detail and grain, stored sideways: EXIF orientation 6 (turn 90 degrees
    clockwise to view), so the upright photo is 768 wide, 1024 high, red on its right half."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:768, 0:1024].astype(np.float32)
    pixels = np.zeros((768, 1024, 3), np.float32)
    pixels[..., 0] = np.where(y < 384, 230.0, 30.0)  # stored top half red
    pixels[..., 2] = np.where(y < 384, 30.0, 230.0)
    pixels[..., 1] = 128 + 100 * np.sin(x / 37.0) * np.cos(y / 23.0)
    pixels += rng.normal(0.0, 6.0, pixels.shape)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90, exif=exif)


def test_decode_draft_of_rotated_photo_matches_full_decode_as_model_input(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    _photo_like_rotated_jpeg(path)
    preprocess = Preprocess(PreprocessConfig(image_size=224))
    seen: list[tuple[int, int]] = []

    def prepare(image: Image.Image) -> Image.Image:
        seen.append(image.size)
        return preprocess.resize_for_model(image)

    drafted = decode_image(path, DecodeConfig(image_size=224), prepare)
    full = decode_image(path, DecodeConfig(image_size=224, use_draft=False), prepare)
    # Draft decoded at half scale (the shorter side stays >= 224), then oriented upright.
    assert seen == [(384, 512), (768, 1024)]
    assert (drafted.width, drafted.height) == (full.width, full.height) == (768, 1024)
    red, blue = drafted.pixels[[0, 2]].int()  # (224, 224) each; green carries the pattern
    assert red[60, 200] > 180 and blue[60, 200] < 80  # the right half is red
    assert red[60, 20] < 80 and blue[60, 20] > 180  # the left half is blue
    # What the model sees (normalised, about unit variance) barely changes.
    drafted_input = preprocess.batch(drafted.pixels[None])  # (1, 3, 224, 224)
    full_input = preprocess.batch(full.pixels[None])
    difference = (drafted_input - full_input).abs()
    assert difference.mean() < 0.02
    assert torch.quantile(difference.flatten(), 0.99) < 0.1
    similarity = torch.nn.functional.cosine_similarity(
        drafted_input.flatten(), full_input.flatten(), dim=0
    )
    assert similarity > 0.999
