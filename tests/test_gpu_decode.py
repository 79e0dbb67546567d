"""The GPU decode path (indexer.gpu_decode), run on the CPU: torchvision decodes with libjpeg there,
so the byte reading, batched tensor decode, orientation and Pillow fallback are the code that runs
with nvJPEG on a GPU. Every file must end as on the Pillow path: the same image or the same error.

Pixel tolerance against the Pillow path, in the model's normalised input (about unit variance):
mean |difference| < 0.02, 99th percentile < 0.15, cosine > 0.999; in uint8 pixels, mean < 1.5.
Measured here: 0.006 / 0.03 / 0.9999 at S = 224 (0.44 in uint8). They differ because the Pillow
path decodes JPEGs at a reduced DCT scale (draft mode) and resamples with Pillow's bicubic, while
this path decodes the full photo and resamples with torch's antialiased bicubic; without draft the
difference is a quarter of that. nvJPEG's IDCT and chroma upsampling add their own small
differences on a GPU (not measurable here; benchmarks/bench_index.py reports them there).
"""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import indexer.gpu_decode as gpu_decode
from coca.preprocess import Preprocess, PreprocessConfig
from indexer.decode import (
    _ORIENTATION_TRANSPOSES,
    DecodeConfig,
    DecodeResult,
    decode_all,
)
from indexer.gpu_decode import (
    DecoderUnavailableError,
    decode_all_on_device,
    orient,
    resolve_decoder,
)
from indexer.jpeg_files import EncodedJpeg, jpeg_length, read_jpeg_or_decode
from storage.hashing import content_hash
from tests.indexer_support import make_bad_corpus, noise_image

CPU = torch.device("cpu")


@pytest.fixture()
def torchvision() -> object:
    return pytest.importorskip("torchvision", reason="the GPU decode path needs torchvision")


def _photo(orientation: int = 1, size: tuple[int, int] = (320, 240), **save: object) -> bytes:
    """Photo-like JPEG (edges, gradient, grain, no symmetry) with an EXIF orientation."""
    rng = np.random.default_rng(orientation)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.zeros((height, width, 3), np.float32)
    pixels[..., 0] = np.where(y < height / 3, 230.0, 30.0)
    pixels[..., 1] = 128 + 100 * np.sin(x / 17.0) * np.cos(y / 11.0)
    pixels[..., 2] = 255.0 * x / width
    pixels += rng.normal(0.0, 6.0, pixels.shape)
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F], exif[0x0110] = "Acme", "Snapper 3"
    exif.get_ifd(0x8769)[0x9003] = "2021:05:06 07:08:09"
    buffer = io.BytesIO()
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    image.save(buffer, format="JPEG", quality=90, exif=exif, **save)
    return buffer.getvalue()


def _jpeg_corpus(root: Path) -> list[Path]:
    """JPEGs the GPU path decodes itself, next to make_bad_corpus's files (which it mostly
    hands to Pillow): every EXIF orientation, grey, progressive, 4:4:4, a trailer after the
    end marker, a cut that still ends in an end marker, an odd size."""
    root.mkdir(parents=True, exist_ok=True)
    files = {f"orientation_{o}.jpg": _photo(o) for o in range(1, 9)}
    files["trailer.jpg"] = _photo() + b"\x00\x01trailer\xff\xd9"
    files["progressive.jpg"] = _photo(progressive=True)
    files["subsampling_444.jpg"] = _photo(subsampling=0)
    files["odd_size.jpg"] = _photo(size=(33, 71))
    cut = _photo()
    files["cut_with_end_marker.jpg"] = cut[: len(cut) // 2] + b"\xff\xd9"
    grey = io.BytesIO()
    Image.open(io.BytesIO(_photo())).convert("L").save(grey, format="JPEG", quality=90)
    files["grey.jpg"] = grey.getvalue()
    for name, data in files.items():
        (root / name).write_bytes(data)
    return [root / name for name in files]


def _all_paths(root: Path) -> list[Path]:
    corpus = make_bad_corpus(root / "bad")
    return [root / "bad" / item.relative_path for item in corpus] + _jpeg_corpus(root / "jpegs")


def _model_input(result: DecodeResult, preprocess: Preprocess) -> torch.Tensor:
    assert result.image is not None
    return preprocess.batch(result.image.pixels[None])[0]  # (3, S, S) normalised


@pytest.mark.parametrize(
    ("backend", "gpu_threads", "cpu_share"),
    [("threads", 1, 0.0), ("processes", 1, 0.0), ("threads", 3, 0.5), ("processes", 2, 0.3)],
)
def test_gpu_decode_gives_the_pillow_outcome_for_every_file(
    tmp_path: Path, torchvision: object, backend: str, gpu_threads: int, cpu_share: float
) -> None:
    paths = _all_paths(tmp_path)
    preprocess = Preprocess(PreprocessConfig(image_size=32))
    config = DecodeConfig(
        image_size=32,
        workers=2,
        backend=backend,
        chunk_size=3,
        prefetch=8,
        gpu_batch_size=5,
        hash_files=True,
        gpu_threads=gpu_threads,
        cpu_share=cpu_share,
    )
    pillow = list(decode_all(paths, config, preprocess.resize_for_model))
    tensor = list(decode_all_on_device(paths, config, preprocess, CPU))
    assert [r.path for r in tensor] == paths
    assert sum(r.image is None for r in tensor) >= 5  # the corpus's bad files stay errors
    for by_pillow, by_tensor in zip(pillow, tensor, strict=True):
        assert by_tensor.error == by_pillow.error, by_pillow.path
        # Hashed from the bytes the worker read (JPEGs) or from the file (the rest): the same.
        assert by_tensor.content_hash == by_pillow.content_hash, by_pillow.path
        if by_pillow.content_hash is not None:
            assert by_pillow.content_hash == content_hash(by_pillow.path)
        if by_pillow.image is None:
            assert by_tensor.image is None, by_pillow.path
            continue
        assert by_tensor.image is not None, by_pillow.path
        assert by_tensor.image.pixels.shape == (3, 32, 32)
        assert by_tensor.image.pixels.dtype == torch.uint8
        for name in ("width", "height", "format", "taken_at", "camera"):
            assert getattr(by_tensor.image, name) == getattr(by_pillow.image, name), name


def test_gpu_decode_pixels_are_close_to_the_pillow_path(
    tmp_path: Path, torchvision: object
) -> None:
    paths = _jpeg_corpus(tmp_path)[:8]  # the eight orientations of one photo
    preprocess = Preprocess(PreprocessConfig(image_size=224))
    config = DecodeConfig(image_size=224, workers=2)
    pillow = list(decode_all(paths, config, preprocess.resize_for_model))
    tensor = list(decode_all_on_device(paths, config, preprocess, CPU))
    for by_pillow, by_tensor in zip(pillow, tensor, strict=True):
        expected, got = _model_input(by_pillow, preprocess), _model_input(by_tensor, preprocess)
        difference = (expected - got).abs()
        assert difference.mean() < 0.02, by_pillow.path
        assert torch.quantile(difference.flatten(), 0.99) < 0.15, by_pillow.path
        cosine = torch.nn.functional.cosine_similarity(expected.flatten(), got.flatten(), dim=0)
        assert cosine > 0.999, by_pillow.path
        assert by_pillow.image is not None and by_tensor.image is not None
        pixels = (by_pillow.image.pixels.float() - by_tensor.image.pixels.float()).abs()
        assert pixels.mean() < 1.5, by_pillow.path
    # A wrong turn would be far off: the same photo shown un-rotated differs a lot.
    upright, turned = (_model_input(r, preprocess) for r in (tensor[0], tensor[5]))
    assert (upright - turned).abs().mean() > 0.2


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillow_exif_transposes(orientation: int) -> None:
    image = noise_image((7, 5), seed=orientation)  # not square, so a wrong turn changes shape
    transpose = _ORIENTATION_TRANSPOSES.get(orientation)
    upright = image.transpose(transpose) if transpose is not None else image
    stored = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)  # (3, H, W)
    expected = torch.from_numpy(np.asarray(upright).copy()).permute(2, 0, 1)
    assert torch.equal(orient(stored, orientation), expected)


def test_jpeg_length_finds_the_image_end_and_refuses_truncated_files() -> None:
    data = _photo()
    assert jpeg_length(data) == len(data)
    assert jpeg_length(data + b"trailer") == len(data)
    assert jpeg_length(data[: len(data) // 2]) is None
    # An end marker inside an APP segment (an EXIF thumbnail's) does not count.
    thumbnail = b"\xff\xe2" + (2 + 6).to_bytes(2, "big") + b"\xff\xd8\x00\x00\xff\xd9"
    with_thumbnail = data[:2] + thumbnail + data[2:]
    assert jpeg_length(with_thumbnail) == len(with_thumbnail)
    assert jpeg_length(with_thumbnail[: len(with_thumbnail) // 2]) is None
    assert jpeg_length(b"\xff\xd8\xff") is None


def test_read_jpeg_or_decode_reads_bytes_only_for_jpegs_nvjpeg_takes(tmp_path: Path) -> None:
    corpus = make_bad_corpus(tmp_path)
    config, prepare = DecodeConfig(image_size=32), Preprocess().resize_for_model
    read = {
        item.relative_path: read_jpeg_or_decode(tmp_path / item.relative_path, config, prepare)
        for item in corpus
    }
    rotated = read["rotated.jpg"]
    assert isinstance(rotated, EncodedJpeg)
    assert (rotated.header.width, rotated.header.height, rotated.header.orientation) == (20, 40, 6)
    assert rotated.header.camera == "Acme Snapper 3"
    # CMYK, truncated, not-JPEG and unreadable files are settled by the Pillow path already.
    for name in ("cmyk.jpg", "truncated.jpg", "png_named.jpg", "notes.jpg", "bomb.png"):
        assert isinstance(read[name], DecodeResult), name


def _spy_decode_jpeg(
    monkeypatch: pytest.MonkeyPatch, reject: Callable[[torch.Tensor], bool]
) -> list[int]:
    """Wrap torchvision's decode_jpeg: count the files per call, raise for `reject`ed data."""
    import torchvision.io

    calls: list[int] = []
    original = torchvision.io.decode_jpeg

    def decode_jpeg(data: list[torch.Tensor], **kwargs: object) -> list[torch.Tensor]:
        calls.append(len(data))
        if any(reject(one) for one in data):
            raise RuntimeError("Error while decoding JPEG images: simulated nvJPEG refusal")
        return original(data, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", decode_jpeg)
    return calls


def test_gpu_decode_falls_back_to_pillow_for_a_file_decode_jpeg_rejects(
    tmp_path: Path, torchvision: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _jpeg_corpus(tmp_path)[:6]
    refused = paths[2].read_bytes()
    calls = _spy_decode_jpeg(monkeypatch, lambda data: len(data) == len(refused))
    pillow_paths: list[Path] = []
    original = gpu_decode.decode_or_error

    def pillow(path: Path, *args: object) -> DecodeResult:
        pillow_paths.append(path)
        return original(path, *args)

    monkeypatch.setattr(gpu_decode, "decode_or_error", pillow)
    preprocess = Preprocess(PreprocessConfig(image_size=32))
    config = DecodeConfig(image_size=32, workers=2, backend="threads", gpu_batch_size=6)
    results = list(decode_all_on_device(paths, config, preprocess, CPU))
    assert all(r.image is not None for r in results)
    assert pillow_paths == [paths[2]]  # only the refused file took the Pillow path
    assert calls == [6, 1, 1, 1, 1, 1, 1]  # the batch, then file by file to find the bad one
    expected = next(decode_all([paths[2]], config, preprocess.resize_for_model))
    assert expected.image is not None and results[2].image is not None
    assert torch.equal(results[2].image.pixels, expected.image.pixels)


def test_gpu_decode_refuses_a_bomb_from_its_header_without_decoding(
    tmp_path: Path, torchvision: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(_photo(size=(1200, 1000)))
    calls = _spy_decode_jpeg(monkeypatch, lambda data: False)
    config = DecodeConfig(image_size=32, max_pixels=1_000_000, workers=1)
    (result,) = decode_all_on_device([path], config, Preprocess(), CPU)
    assert result.image is None and "more than the limit" in (result.error or "")
    assert calls == []


def test_resolve_decoder_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_decoder("cpu", torch.device("cuda")) == "cpu"
    assert resolve_decoder("auto", CPU) == "cpu"
    with pytest.raises(DecoderUnavailableError, match="--decode cpu"):
        resolve_decoder("gpu", CPU)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    gpu_decode.probe_decode_jpeg.cache_clear()
    with pytest.raises(DecoderUnavailableError, match="no CUDA GPU"):
        resolve_decoder("gpu", torch.device("cuda"))
    gpu_decode.probe_decode_jpeg.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_decode, "probe_decode_jpeg", lambda device: None)
    assert resolve_decoder("auto", torch.device("cuda")) == "gpu"
    assert resolve_decoder("auto", torch.device("cuda"), workers=11) == "gpu"
    # Enough Pillow workers decode faster than nvJPEG beside the model (measured on an H100).
    assert resolve_decoder("auto", torch.device("cuda"), workers=12) == "cpu"
    assert resolve_decoder("gpu", torch.device("cuda"), workers=14) == "gpu"
    assert resolve_decoder("gpu", torch.device("cuda")) == "gpu"
    monkeypatch.setattr(gpu_decode, "probe_decode_jpeg", lambda device: "no nvJPEG")
    assert resolve_decoder("auto", torch.device("cuda")) == "cpu"
    with pytest.raises(DecoderUnavailableError, match="no nvJPEG"):
        resolve_decoder("gpu", torch.device("cuda"))


def test_probe_without_torchvision_reports_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("torchvision", "torchvision.io"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it now fails
    gpu_decode.probe_decode_jpeg.cache_clear()
    try:
        assert "torchvision is not installed" in (gpu_decode.probe_decode_jpeg("cpu") or "")
    finally:
        gpu_decode.probe_decode_jpeg.cache_clear()


def test_probe_decodes_on_the_cpu(torchvision: object) -> None:
    gpu_decode.probe_decode_jpeg.cache_clear()
    assert gpu_decode.probe_decode_jpeg("cpu") is None


def test_decode_config_rejects_an_unknown_decoder() -> None:
    with pytest.raises(ValueError, match="decoder"):
        DecodeConfig(decoder="nvjpeg")
    with pytest.raises(ValueError, match="gpu_batch_size"):
        DecodeConfig(gpu_batch_size=0)


def test_gpu_decode_stops_its_thread_when_the_caller_stops_early(
    tmp_path: Path, torchvision: object
) -> None:
    paths = _jpeg_corpus(tmp_path) * 4
    config = DecodeConfig(image_size=16, workers=2, backend="processes", prefetch=4)
    results = decode_all_on_device(paths, config, Preprocess(PreprocessConfig(image_size=16)), CPU)
    assert next(results).image is not None
    results.close()
    assert not [t for t in threading.enumerate() if t.name == "gpu-decode"]


def test_gpu_decode_errors_reach_the_caller(
    tmp_path: Path, torchvision: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(files: object, device: object) -> None:
        raise MemoryError("simulated: the GPU is out of memory")

    monkeypatch.setattr(gpu_decode, "decode_jpegs", broken)
    paths = _jpeg_corpus(tmp_path)
    config = DecodeConfig(image_size=16, workers=1)
    with pytest.raises(MemoryError, match="simulated"):
        list(decode_all_on_device(paths, config, Preprocess(), CPU))
    assert not [t for t in threading.enumerate() if t.name == "gpu-decode"]


def test_worker_processes_send_headers_and_the_decode_thread_rereads_the_bytes(
    tmp_path: Path, torchvision: object
) -> None:
    from indexer.gpu_decode import ChunkDecoder
    from indexer.jpeg_files import read_jpeg_header_or_decode

    paths = _jpeg_corpus(tmp_path)[:4]
    preprocess = Preprocess(PreprocessConfig(image_size=32))
    config = DecodeConfig(image_size=32, hash_files=True)
    items = [read_jpeg_header_or_decode(p, config, preprocess.resize_for_model) for p in paths]
    assert all(isinstance(item, EncodedJpeg) and item.data is None for item in items)
    expected = [read_jpeg_or_decode(p, config, preprocess.resize_for_model) for p in paths]
    # The file behind item 1 changes after its header was read: Pillow decodes the new content.
    paths[1].write_bytes(_photo(size=(48, 40)))
    results = ChunkDecoder(config, preprocess, CPU).decode(items)
    assert results[1].image is not None and (results[1].image.width, results[1].image.height) == (
        48,
        40,
    )
    assert results[1].content_hash == content_hash(paths[1])  # the new content's hash
    # Rewritten in place at the same size: told apart by its modification time.
    stat = paths[3].stat()
    os.utime(paths[3], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert items[3].with_data() is None and items[2].with_data() is not None
    for index in (0, 2, 3):
        reread = ChunkDecoder(config, preprocess, CPU).decode([expected[index]])[0]
        assert results[index].image is not None and reread.image is not None
        assert torch.equal(results[index].image.pixels, reread.image.pixels)
        assert results[index].content_hash == content_hash(paths[index])


def test_pillow_share_is_a_stable_choice_per_path(tmp_path: Path) -> None:
    from indexer.jpeg_files import pillow_takes

    paths = [tmp_path / f"photo_{i:04d}.jpg" for i in range(2000)]
    assert not any(pillow_takes(p, 0.0) for p in paths)
    assert all(pillow_takes(p, 1.0) for p in paths)
    taken = [p for p in paths if pillow_takes(p, 0.3)]
    assert 0.25 * len(paths) < len(taken) < 0.35 * len(paths)
    assert taken == [p for p in paths if pillow_takes(p, 0.3)]  # the same files every time
    assert set(taken) <= {p for p in paths if pillow_takes(p, 0.6)}  # a larger share adds files


def test_gpu_decode_config_rejects_bad_threads_and_share() -> None:
    with pytest.raises(ValueError, match="gpu_threads"):
        DecodeConfig(gpu_threads=0)
    for share in (-0.1, 1.5):
        with pytest.raises(ValueError, match="cpu_share"):
            DecodeConfig(cpu_share=share)


def test_reread_refuses_a_same_size_rewrite_with_the_old_time_whose_end_marker_moved(
    tmp_path: Path,
) -> None:
    from indexer.jpeg_files import read_jpeg_header_or_decode

    path = tmp_path / "photo.jpg"
    original = _photo()
    path.write_bytes(original)
    preprocess = Preprocess(PreprocessConfig(image_size=32))
    item = read_jpeg_header_or_decode(
        path, DecodeConfig(image_size=32), preprocess.resize_for_model
    )
    assert isinstance(item, EncodedJpeg) and item.data is None
    assert item.with_data() is not None  # unchanged: the bytes come back
    stat = path.stat()
    # Same size, end marker two bytes earlier, and the old modification time put back.
    path.write_bytes(original[:-4] + b"\xff\xd9\x00\x00")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert item.with_data() is None  # Pillow decides from the file as it is now
