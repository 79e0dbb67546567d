"""Preprocess: PIL path parity with open_clip, tensor batch path, RGB conversion, validation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from coca.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    Preprocess,
    PreprocessConfig,
    to_rgb,
    to_uint8_tensor,
)

SIZE = 32  # small input side keeps the tests fast; the arithmetic is the same as at 224


def photo_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB image (H, W, 3) uint8 with edges and mild noise, roughly like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    red = 200 * u + 30 * np.sin(6 * v)
    green = 180 * v + 40 * np.cos(5 * u + 2 * v)
    blue = 120 + 100 * ((u - 0.5) ** 2 + (v - 0.4) ** 2 < 0.08)
    image = np.stack([red, green, blue], axis=-1) + rng.normal(0, 4, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def rgb_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(photo_like(width, height, seed))


def mode_images() -> dict[str, Image.Image]:
    base = rgb_image(61, 47, seed=3)
    rgba = base.copy()
    rgba.putalpha(Image.fromarray(np.tile(np.arange(61, dtype=np.uint8) * 4, (47, 1))))
    palette = base.quantize(colors=16)
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    deep = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    return {
        "L": base.convert("L"),
        "LA": rgba.convert("LA"),
        "RGBA": rgba,
        "P": palette,
        "P_transparent": transparent,
        "CMYK": base.convert("CMYK"),
        "I;16": deep,
        "1": base.convert("1"),
    }


@pytest.fixture(scope="module")
def open_clip_transform():
    transform = pytest.importorskip("open_clip.transform")

    def build(resize_mode: str = "shortest", fill_color: int = 0):
        return transform.image_transform(
            SIZE, is_train=False, resize_mode=resize_mode, fill_color=fill_color
        )

    return build


RGB_SIZES = [(64, 48), (48, 64), (32, 32), (33, 32), (100, 7), (5, 90), (20, 15), (37, 121)]


@pytest.mark.parametrize(("width", "height"), RGB_SIZES)
@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
def test_preprocess_pil_matches_open_clip_rgb(
    open_clip_transform, width: int, height: int, resize_mode: str
) -> None:
    image = rgb_image(width, height, seed=width * height)
    preprocess = Preprocess(
        PreprocessConfig(image_size=SIZE, resize_mode=resize_mode, fill_color=7)
    )
    expected = open_clip_transform(resize_mode, fill_color=7)(image)
    ours = preprocess(image)
    assert ours.shape == (3, SIZE, SIZE)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", list(mode_images()))
@pytest.mark.parametrize("resize_mode", ["shortest", "longest"])
def test_preprocess_pil_matches_open_clip_other_modes(
    open_clip_transform, mode: str, resize_mode: str
) -> None:
    image = mode_images()[mode]
    preprocess = Preprocess(
        PreprocessConfig(image_size=SIZE, resize_mode=resize_mode, fill_color=3)
    )
    expected = open_clip_transform(resize_mode, fill_color=3)(image)
    torch.testing.assert_close(preprocess(image), expected, atol=1e-6, rtol=0)


def test_preprocess_default_is_clip_224(open_clip_transform) -> None:
    transform = pytest.importorskip("open_clip.transform")
    image = rgb_image(300, 250)
    expected = transform.image_transform(224, is_train=False)(image)
    ours = Preprocess()(image)
    assert ours.shape == (3, 224, 224)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
def test_preprocess_batch_close_to_pil(resize_mode: str) -> None:
    preprocess = Preprocess(PreprocessConfig(image_size=SIZE, resize_mode=resize_mode))
    images = [rgb_image(w, h, seed=i) for i, (w, h) in enumerate([(96, 72), (72, 96), (40, 33)])]
    pil = torch.stack([preprocess(image) for image in images])
    tensors = [to_uint8_tensor(image) for image in images]
    batched = preprocess.batch(tensors)
    assert batched.shape == (3, 3, SIZE, SIZE)
    assert batched.dtype == torch.float32
    assert (batched - pil).abs().mean().item() < 0.02


def test_preprocess_batch_tensor_equals_list() -> None:
    preprocess = Preprocess(PreprocessConfig(image_size=SIZE))
    images = [to_uint8_tensor(rgb_image(80, 60, seed=s)) for s in range(3)]
    stacked = preprocess.batch(torch.stack(images))
    listed = preprocess.batch(images)
    torch.testing.assert_close(stacked, listed, atol=0, rtol=0)
    assert stacked.device == images[0].device


def test_preprocess_resize_batch_is_batch_before_normalisation() -> None:
    preprocess = Preprocess(PreprocessConfig(image_size=SIZE))
    images = [to_uint8_tensor(rgb_image(80 + 9 * s, 60, seed=s)) for s in range(3)]  # 3 sizes
    resized = preprocess.resize_batch(images)
    assert resized.dtype == torch.uint8 and resized.shape == (3, 3, SIZE, SIZE)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    normalised = (resized.float() / 255 - mean) / std
    torch.testing.assert_close(normalised, preprocess.batch(images), atol=0, rtol=0)


def test_preprocess_batch_same_size_is_exact() -> None:
    # No resampling needed: the tensor path then equals the PIL path exactly.
    preprocess = Preprocess(PreprocessConfig(image_size=SIZE))
    image = rgb_image(SIZE, SIZE + 6)
    torch.testing.assert_close(
        preprocess.batch([to_uint8_tensor(image)])[0], preprocess(image), atol=1e-6, rtol=0
    )


def test_preprocess_normalization_uses_mean_std() -> None:
    preprocess = Preprocess(PreprocessConfig(image_size=4))
    grey = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    out = preprocess.batch(grey)
    expected = (1.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out[0, :, 0, 0], expected)


def test_preprocess_resize_for_model_matches_pil_path() -> None:
    for resize_mode in ("shortest", "squash", "longest"):
        preprocess = Preprocess(PreprocessConfig(image_size=SIZE, resize_mode=resize_mode))
        image = rgb_image(150, 90)
        small = preprocess.resize_for_model(image)
        assert small.mode == "RGB"
        assert small.size == (SIZE, SIZE)
        fast = preprocess.batch([to_uint8_tensor(small)])[0]
        assert (fast - preprocess(image)).abs().mean().item() < 0.02


def test_preprocess_resize_for_model_panorama_is_cheap() -> None:
    preprocess = Preprocess(PreprocessConfig(image_size=SIZE))
    panorama = rgb_image(20000, 4)
    assert preprocess.resize_for_model(panorama).size == (SIZE, SIZE)


def test_preprocess_resize_for_model_drafts_jpeg() -> None:
    buffer = io.BytesIO()
    rgb_image(800, 600).save(buffer, format="JPEG", quality=95)
    preprocess = Preprocess(PreprocessConfig(image_size=SIZE))
    buffer.seek(0)
    reference = preprocess(Image.open(buffer))
    buffer.seek(0)
    opened = Image.open(buffer)
    small = preprocess.resize_for_model(opened)
    assert opened.size[1] < 600  # decoded at a reduced DCT scale
    assert opened.size[1] >= SIZE
    fast = preprocess.batch([to_uint8_tensor(small)])[0]
    assert (fast - reference).abs().mean().item() < 0.03


def test_preprocess_to_uint8_tensor_modes() -> None:
    for mode, image in mode_images().items():
        pixels = to_uint8_tensor(image)
        assert pixels.dtype == torch.uint8, mode
        assert pixels.shape == (3, image.height, image.width), mode


def test_preprocess_to_rgb_composites_on_white() -> None:
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("LA", (2, 2), (0, 128))
    assert to_rgb(half).getpixel((0, 0)) == (127, 127, 127)
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([10, 20, 30] * 256)
    palette.info["transparency"] = 0
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)


def test_preprocess_to_rgb_scales_sixteen_bit() -> None:
    deep = Image.fromarray(np.array([[0, 257 * 128, 65535]], dtype=np.uint16))
    assert to_uint8_tensor(deep)[0, 0].tolist() == [0, 128, 255]
    grey = Image.new("L", (1, 1), 77)
    assert to_uint8_tensor(grey)[:, 0, 0].tolist() == [77, 77, 77]
    cmyk = Image.new("CMYK", (1, 1), (0, 0, 0, 0))
    assert to_uint8_tensor(cmyk)[:, 0, 0].tolist() == [255, 255, 255]


def test_preprocess_batch_rejects_bad_input() -> None:
    preprocess = Preprocess(PreprocessConfig(image_size=SIZE))
    with pytest.raises(ValueError, match="empty batch"):
        preprocess.batch([])
    with pytest.raises(ValueError, match="empty batch"):
        preprocess.batch(torch.zeros(0, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        preprocess.batch(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels.*image 1"):
        preprocess.batch(
            [torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(1, 8, 8, dtype=torch.uint8)]
        )
    with pytest.raises(ValueError, match="uint8"):
        preprocess.batch(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="unsqueeze"):
        preprocess.batch(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="no pixels"):
        preprocess.batch([torch.zeros(3, 0, 8, dtype=torch.uint8)])
    with pytest.raises(TypeError, match="PIL"):
        preprocess(torch.zeros(3, 8, 8))  # type: ignore[arg-type]


def test_preprocess_config_open_clip_round_trip() -> None:
    cfg = {
        "size": [336, 336],
        "mode": "RGB",
        "mean": [0.5, 0.5, 0.5],
        "std": 0.25,
        "interpolation": "random",
        "resize_mode": "squash",
        "fill_color": 0,
        "unrelated": True,
    }
    config = PreprocessConfig.from_open_clip(cfg)
    assert config == PreprocessConfig(
        image_size=336, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize_mode="squash"
    )
    assert PreprocessConfig.from_open_clip(config.to_dict()) == config
    assert PreprocessConfig.from_open_clip({}) == PreprocessConfig()


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"size": [224, 256]}, "square"),
        ({"mode": "L"}, "RGB"),
        ({"resize_mode": "fit"}, "resize_mode"),
        ({"interpolation": "nearest"}, "interpolation"),
        ({"std": [0.1, 0.0, 0.1]}, "positive"),
        ({"mean": [0.1, 0.2]}, "3 values"),
        ({"fill_color": 300}, "fill_color"),
    ],
)
def test_preprocess_config_rejects_bad_values(cfg: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PreprocessConfig.from_open_clip(cfg)


def test_resize_for_model_shrinks_photos_as_pillows_box_resize_does() -> None:
    """The common case runs torch's uint8 resize; its pixels must stay Pillow's to one level."""
    from coca.preprocess import _PIL_RESAMPLE, _crop_origin

    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:384, 0:512].astype(np.float32)
    pixels = np.stack([x / 2, 128 + 100 * np.sin(x / 9) * np.cos(y / 7), y / 1.6], axis=-1)
    photo = Image.fromarray((pixels + rng.normal(0, 8, pixels.shape)).clip(0, 255).astype("uint8"))
    for interpolation in ("bicubic", "bilinear"):
        preprocess = Preprocess(PreprocessConfig(image_size=224, interpolation=interpolation))
        height, width = preprocess._resized_size(photo.height, photo.width)  # (224, 298)
        top, left = _crop_origin(height, width, 224)
        sx, sy = photo.width / width, photo.height / height
        box = (left * sx, top * sy, (left + 224) * sx, (top + 224) * sy)
        pillow = np.asarray(photo.resize((224, 224), _PIL_RESAMPLE[interpolation], box=box))
        ours = np.asarray(preprocess.resize_for_model(photo))
        difference = np.abs(ours.astype(np.int16) - pillow.astype(np.int16))
        assert ours.shape == (224, 224, 3) and ours.dtype == np.uint8
        assert difference.max() <= 1 and difference.mean() < 0.05, interpolation


def test_resize_for_model_keeps_pillow_for_upscaling_and_panoramas() -> None:
    preprocess = Preprocess(PreprocessConfig(image_size=SIZE))
    for image in (rgb_image(SIZE // 2, SIZE // 3), rgb_image(40 * SIZE, SIZE)):
        small = preprocess.resize_for_model(image)
        assert small.size == (SIZE, SIZE)
        reference = preprocess(image)
        fast = preprocess.batch([to_uint8_tensor(small)])[0]
        assert (fast - reference).abs().mean().item() < 0.05


def test_pixels_for_model_are_resize_for_models_pixels_as_a_tensor() -> None:
    preprocess = Preprocess(PreprocessConfig(image_size=SIZE))
    rng = np.random.default_rng(5)
    noisy = Image.fromarray(rng.integers(0, 256, (3 * SIZE, 4 * SIZE, 3), dtype=np.uint8))
    images = {
        "shrunk with torch": noisy,
        "upscaled": rgb_image(SIZE // 2, SIZE // 3),
        "panorama": rgb_image(40 * SIZE, SIZE),
        "with alpha": noisy.convert("RGBA"),
        "grey": noisy.convert("L"),
    }
    for name, image in images.items():
        pixels = preprocess.pixels_for_model(image.copy())
        expected = to_uint8_tensor(preprocess.resize_for_model(image.copy()))
        assert pixels.shape == (3, SIZE, SIZE) and pixels.dtype == torch.uint8, name
        assert torch.equal(pixels, expected), name
        # Pillow's channel-last layout, exactly S x S: batches stack it with a plain copy.
        assert pixels.permute(1, 2, 0).is_contiguous(), name
        assert pixels.untyped_storage().nbytes() == 3 * SIZE * SIZE, name
