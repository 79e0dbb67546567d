"""The decode workers' side of GPU decoding: which files nvJPEG may take, and their headers.

A worker reads a JPEG, checks that it is one nvJPEG can turn into RGB (a baseline or progressive
YCbCr/grey JPEG with an end marker after its scans), reads its header (size, EXIF orientation,
time, camera; no pixels) and hands that over as an `EncodedJpeg`; every other file is decoded
with Pillow right there (`indexer.decode.decode_or_error`), so it ends exactly as on the CPU path.
`indexer.gpu_decode` decodes the EncodedJpegs on the GPU.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from indexer.decode import (
    DecodeConfig,
    DecodeResult,
    ImageHeader,
    Prepare,
    decode_or_error,
    hash_if_asked,
    read_header,
    register_heif_opener,
)

logger = logging.getLogger(__name__)

_JPEG_START = b"\xff\xd8\xff"  # SOI, then the first marker
_END_OF_IMAGE = b"\xff\xd9"
_START_OF_SCAN = 0xDA
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field
_JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a camera JPEG with extra frames; the first is the photo
_RGB_MODES = ("RGB", "L")  # YCbCr and grey JPEGs; CMYK/YCCK stay with Pillow


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG file's bytes and header, read by a decode worker, waiting for the GPU decoder."""

    path: Path
    # The whole file; writable, so torch.frombuffer shares it without a warning. None when a
    # worker process read it: the decode thread reads it again (`with_data`) rather than have
    # ~200 KB a photo pickled through the pool's pipe, which its manager thread reads under the
    # GIL (half of that thread's time in a 20,480-photo H100 run). Handing the bytes over in
    # /dev/shm segments instead was measured and dropped: mapping (or reading) freshly written
    # shared pages cost the indexing process ~57 us of system time a photo, more than reading
    # the file again from the page cache (benchmarks/bench_index_host.py: 190 against 158 us).
    data: bytearray | None = field(repr=False)
    length: int  # bytes up to and including the image's end marker (a trailer is dropped)
    header: ImageHeader
    content_hash: str | None = None  # storage.hashing.content_hash, with DecodeConfig.hash_files
    file_size: int = 0  # bytes in the file when the worker read it
    mtime_ns: int = 0  # its modification time then

    def with_data(self) -> EncodedJpeg | None:
        """This JPEG with its bytes, read again when a worker process dropped them; None when
        the file changed since the worker read its header (then Pillow decides, from scratch)."""
        if self.data is not None:
            return self
        try:
            read = _read_file(self.path)
        except OSError:
            return None
        same = (len(read.data), read.mtime_ns) == (self.file_size, self.mtime_ns)
        # Same size and modification time: the file the worker measured. Its end marker is
        # checked where the worker found it instead of searching the whole file again, which
        # cost ~140 us a photo on the indexing process's interpreter.
        if not same or read.data[self.length - 2 : self.length] != _END_OF_IMAGE:
            return None
        return dataclasses.replace(self, data=read.data)


DecodeItem = EncodedJpeg | DecodeResult


def jpeg_length(data: bytes | bytearray) -> int | None:
    """Bytes up to and including the end marker that closes the image's scans; None without one.

    The segments before the first scan are walked by their lengths, so the end marker of an EXIF
    thumbnail (inside APP1) is skipped; from the scan on, coded data never holds FF D9 (a data
    byte FF is always followed by 00), so the first FF D9 is the image's end.
    """
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
        elif marker == _START_OF_SCAN:
            return _end_of_image(data, position)
        elif marker in _STANDALONE_MARKERS:
            position += 2
        else:
            position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return None


def _end_of_image(data: bytes | bytearray, start: int) -> int | None:
    """Bytes up to and including the first FF D9 at or after `start`; None without one.

    Vectorised with numpy: `bytearray.find` of the two-byte marker crawls through coded data
    (~1.3 GB/s, 140 us for a 180 KB photo), since every stuffed FF 00 is a partial match.
    """
    coded = np.frombuffer(data, dtype=np.uint8)[start:]
    if len(coded) < 2:
        return None
    ends = (coded[:-1] == 0xFF) & (coded[1:] == 0xD9)
    first = int(ends.argmax())
    return start + first + 2 if ends[first] else None


def read_jpeg_or_decode(path: Path, config: DecodeConfig, prepare: Prepare) -> DecodeItem:
    """A decode worker's job on the GPU path: the bytes and header of a JPEG nvJPEG can take,
    else the Pillow path's result (image or error), so no file is lost or judged differently.
    Files in `config.cpu_share` are decoded with Pillow here, beside the GPU."""
    if pillow_takes(path, config.cpu_share):
        return decode_or_error(path, config, prepare)
    try:
        jpeg = _inspect_jpeg(path, _read_file(path), config)
    except Exception as error:  # noqa: BLE001 - the Pillow path below gives the recorded message
        logger.debug("%s goes to Pillow: %s", path, error)
        jpeg = None
    return jpeg if jpeg is not None else decode_or_error(path, config, prepare)


def pillow_takes(path: Path, share: float) -> bool:
    """Whether `path` is among the `share` of files Pillow decodes on the GPU path: by a hash
    of the path, so a file takes the same path every run."""
    if share <= 0.0:
        return False
    return zlib.crc32(str(path).encode("utf-8", "surrogateescape")) % 10_000 < share * 10_000


def read_jpeg_header_or_decode(path: Path, config: DecodeConfig, prepare: Prepare) -> DecodeItem:
    """read_jpeg_or_decode for a worker process: the JPEG's header without its bytes."""
    item = read_jpeg_or_decode(path, config, prepare)
    return dataclasses.replace(item, data=None) if isinstance(item, EncodedJpeg) else item


@dataclass(frozen=True)
class _FileBytes:
    data: bytearray
    mtime_ns: int  # when it was opened: a file rewritten in place at the same size differs here


def _read_file(path: Path) -> _FileBytes:
    with open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        data = bytearray(stat.st_size)
        read = handle.readinto(data)
    del data[read:]  # the file shrank while it was read
    return _FileBytes(data, stat.st_mtime_ns)


def _inspect_jpeg(path: Path, read: _FileBytes, config: DecodeConfig) -> EncodedJpeg | None:
    """The EncodedJpeg of a JPEG fit for nvJPEG, None when Pillow must decide."""
    data = read.data
    if not data.startswith(_JPEG_START):
        return None
    length = jpeg_length(data)
    if length is None:
        return None
    register_heif_opener()  # as the Pillow path does, so Image.open sees the same formats
    with Image.open(io.BytesIO(data)) as image:  # parses the header; no pixel is decoded
        if image.format not in _JPEG_FORMATS or image.mode not in _RGB_MODES:
            return None
        header = read_header(image, config)  # raises past the pixel limit
    digest = hash_if_asked(path, config, data)
    return EncodedJpeg(path, data, length, header, digest, len(data), read.mtime_ns)
