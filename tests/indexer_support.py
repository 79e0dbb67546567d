"""Builders shared by the indexer tests: tiny photo libraries and a corpus of awkward files.

This module holds no tests (so its name does not start with test_, and pytest does not collect it).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

RED = (220, 20, 20)
BLUE = (20, 20, 220)
GREEN = (20, 200, 20)


@dataclass(frozen=True)
class CorpusFile:
    """One file of the awkward corpus and what the decoder should make of it."""

    relative_path: str
    decodes: bool  # True: a usable image; False: recorded as an error


def solid(size: tuple[int, int], color: tuple[int, ...], mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, color)


def noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def write_photo(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    """A small distinct JPEG (noise plus a colour cast) at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_image(size, seed).save(path, format="JPEG", quality=85)
    return path


def write_library(root: Path, count: int, seed: int = 0, folders: int = 3) -> list[Path]:
    """`count` small JPEGs spread over a few subfolders."""
    paths = []
    for index in range(count):
        folder = root / f"album{index % folders}"
        paths.append(write_photo(folder / f"img_{index:05d}.jpg", seed * 100_000 + index))
    return paths


def png_chunk(tag: bytes, data: bytes) -> bytes:
    body = tag + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def fake_png_header(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions while holding almost no data: a decompression bomb."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def rotated_jpeg_bytes() -> bytes:
    """A 40x20 JPEG, red left half and blue right half, tagged EXIF orientation 6 (rotate CW).

    Shown upright it is 20 wide and 40 tall with red on top.
    """
    image = solid((40, 20), BLUE)
    image.paste(solid((20, 20), RED), (0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Acme"
    exif[0x0110] = "Snapper 3"
    exif.get_ifd(0x8769)[0x9003] = "2021:05:06 07:08:09"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def animated_gif(path: Path) -> None:
    frames = [solid((16, 16), RED, "RGB"), solid((16, 16), BLUE, "RGB")]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def palette_with_transparency(path: Path) -> None:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0, *RED] + [0, 0, 0] * 254)
    for x in range(8):
        for y in range(16):
            image.putpixel((x, y), 1)  # left half red, right half transparent
    image.save(path, transparency=0)


def sixteen_bit_png(path: Path) -> None:
    values = np.full((16, 16), 32768, dtype=np.uint16)  # mid grey in 16 bits
    Image.fromarray(values).save(path)


def make_bad_corpus(root: Path) -> list[CorpusFile]:
    """Write at least fifteen kinds of awkward file under `root`; return what each should give."""
    root.mkdir(parents=True, exist_ok=True)
    corpus: list[CorpusFile] = []

    def add(name: str, decodes: bool) -> Path:
        corpus.append(CorpusFile(name, decodes))
        return root / name

    good = io.BytesIO()
    noise_image((200, 200), 1).save(good, format="JPEG", quality=90)
    add("truncated.jpg", False).write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    add("zero_bytes.jpg", False).write_bytes(b"")
    solid((32, 24), GREEN).save(add("png_named.jpg", True), format="PNG")
    add("notes.jpg", False).write_text("this is not a photo\n")
    add("bomb.png", False).write_bytes(fake_png_header(40_000, 40_000))
    solid((32, 24), (0, 255, 255, 0), "CMYK").save(add("cmyk.jpg", True), format="JPEG")
    sixteen_bit_png(add("sixteen_bit.png", True))
    palette_with_transparency(add("palette_transparent.png", True))
    animated_gif(add("animated.gif", True))
    add("rotated.jpg", True).write_bytes(rotated_jpeg_bytes())
    solid((1, 1), RED).save(add("one_pixel.png", True))
    solid((20_000, 3), BLUE).save(add("panorama.png", True))
    solid((24, 24), GREEN).save(add("фото 😀 été.png", True))
    solid((24, 24), RED, "RGBA").save(add("rgba.webp", True), format="WEBP")
    solid((24, 24), BLUE).save(add("plain.bmp", True))
    solid((24, 24), GREEN).save(add("plain.tiff", True))
    solid((24, 24), (128, 128), "LA").save(add("grey_alpha.png", True))
    _write_heif(add, root)
    garbage = bytearray(good.getvalue())
    garbage[2:40] = b"\x00" * 38  # wipes the JPEG header segments
    add("header_smashed.jpg", False).write_bytes(bytes(garbage))
    (root / "folder.jpg").mkdir()  # a folder with an image name is not a file
    (root / ".hidden.jpg").write_bytes(good.getvalue())
    (root / ".hidden_album").mkdir()
    (root / ".hidden_album" / "secret.jpg").write_bytes(good.getvalue())
    os.symlink(root, root / "loop")  # a folder linking to itself
    os.symlink(root / "missing.jpg", root / "dangling.jpg")
    return corpus


def _write_heif(add, root: Path) -> None:  # noqa: ANN001 - the local closure of make_bad_corpus
    """HEIC through pillow-heif and AVIF through Pillow, when this machine can encode them."""
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        solid((32, 32), RED).save(root / "phone.heic", format="HEIF")
        add("phone.heic", True)
    except (ImportError, ValueError, OSError, KeyError):
        pass  # no HEIF encoder on this machine; the other kinds still cover the corpus
    try:
        solid((32, 32), BLUE).save(root / "modern.avif", format="AVIF")
        add("modern.avif", True)
    except (ValueError, OSError, KeyError):
        pass  # Pillow built without AVIF


def save_tiny_bundle(folder: Path, seed: int = 0) -> Path:
    """A random-weight coca_tiny model saved as a bundle (the indexer tests' model)."""
    import torch

    import coca
    from coca.config import get_config
    from coca.model import CoCa
    from coca.preprocess import Preprocess, PreprocessConfig
    from coca.tokenizer import Tokenizer

    config = get_config("coca_tiny")
    torch.manual_seed(seed)
    model = CoCa(config).eval()
    model.tokenizer = Tokenizer.clip(context_length=config.text.context_length)
    model.preprocess = Preprocess(PreprocessConfig(image_size=config.vision.image_size))
    return coca.save_bundle(model, folder)


def fast_decoding():  # noqa: ANN201 - coca.generate.DecodingConfig
    """Short greedy captions: every code path of captioning at a fraction of the cost."""
    from coca.generate import DecodingConfig

    return DecodingConfig(generation_type="greedy", seq_len=8, min_seq_len=2)
