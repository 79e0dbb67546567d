"""Write the world as a photo library: JPEG/PNG files in folders, EXIF dates, and a JSON-lines
manifest.

This is the demo's sample library and the test corpus of the indexer and the app: each manifest line
holds the file's path relative to the library root, its scene graph and reference captions, so tests
can check search results against the truth.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

from coca.world.captions import captions_for
from coca.world.render import render_scene
from coca.world.scene import Scene, item_seed, scene_for_seed

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
CAMERA_MAKE, CAMERA_MODEL = "coca-world", "procedural camera"
_PIL_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
_FIRST_DAY = datetime(2019, 1, 1)
_DAYS_SPANNED = 6 * 365
_EXIF_IFD, _DATETIME, _DATETIME_ORIGINAL, _MAKE, _MODEL = 0x8769, 0x0132, 0x9003, 0x010F, 0x0110


@dataclass(frozen=True)
class LibraryEntry:
    """One manifest line: `file` is relative to the library root, with forward slashes."""

    file: str
    scene: Scene
    captions: tuple[str, ...]
    taken_at: datetime
    width: int
    height: int

    def to_json(self) -> str:
        return json.dumps(
            {
                "file": self.file,
                "scene": self.scene.to_dict(),
                "captions": list(self.captions),
                "taken_at": self.taken_at.isoformat(),
                "width": self.width,
                "height": self.height,
            }
        )

    @classmethod
    def from_json(cls, line: str) -> LibraryEntry:
        data = json.loads(line)
        return cls(
            file=data["file"],
            scene=Scene.from_dict(data["scene"]),
            captions=tuple(data["captions"]),
            taken_at=datetime.fromisoformat(data["taken_at"]),
            width=int(data["width"]),
            height=int(data["height"]),
        )


def _relative_path(index: int, scene: Scene, formats: tuple[str, ...]) -> str:
    """Every fifth photo at the root, the rest in background folders; every fourth not a JPEG."""
    extension = formats[0]
    if len(formats) > 1 and index % 4 == 3:
        extension = formats[1 + (index // 4) % (len(formats) - 1)]
    name = f"photo_{index:05d}.{extension}"
    return name if index % 5 == 0 else f"{scene.background}/{name}"


def _exif(taken_at: datetime) -> Image.Exif:
    exif = Image.Exif()
    stamp = taken_at.strftime("%Y:%m:%d %H:%M:%S")
    exif[_MAKE], exif[_MODEL], exif[_DATETIME] = CAMERA_MAKE, CAMERA_MODEL, stamp
    exif.get_ifd(_EXIF_IFD)[_DATETIME_ORIGINAL] = stamp
    return exif


def _save(image: Image.Image, path: Path, taken_at: datetime, rng: np.random.Generator) -> None:
    pil_format = _PIL_FORMATS[path.suffix[1:]]
    options: dict = {"exif": _exif(taken_at)}
    if pil_format in ("JPEG", "WEBP"):
        options["quality"] = int(rng.integers(80, 96))
    if pil_format == "PNG":
        options["compress_level"] = 1  # grain barely compresses; level 6 is 4x slower for 15%
    image.save(path, format=pil_format, **options)


def write_library(
    folder: str | Path,
    count: int,
    seed: int,
    width: int = 640,
    height: int = 480,
    formats: tuple[str, ...] = ("jpg", "png"),
    captions_per_image: int = 5,
) -> Path:
    """Render `count` scenes of split `seed` into `folder` with a manifest; returns the folder.

    Deterministic: the same arguments give the same files (and pixels) and the same manifest.
    """
    unknown = [f for f in formats if f not in _PIL_FORMATS]
    if not formats or unknown:
        raise ValueError(f"unsupported image formats {unknown}; choose from {sorted(_PIL_FORMATS)}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(count):
        scene = scene_for_seed(item_seed(seed, index))
        rng = np.random.default_rng([seed, index, 1])
        taken_at = _FIRST_DAY + timedelta(seconds=int(rng.integers(_DAYS_SPANNED * 86400)))
        relative = _relative_path(index, scene, tuple(formats))
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        _save(render_scene(scene, width, height), path, taken_at, rng)
        captions = tuple(captions_for(scene, rng, captions_per_image))
        entry = LibraryEntry(relative, scene, captions, taken_at, width, height)
        lines.append(entry.to_json())
    (root / MANIFEST_NAME).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    logger.info("wrote %d images and %s to %s", count, MANIFEST_NAME, root)
    return root


def read_manifest(folder: str | Path) -> list[LibraryEntry]:
    """The entries of a library written by `write_library`."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {folder}; write one with write_library")
    lines = path.read_text(encoding="utf-8").splitlines()
    return [LibraryEntry.from_json(line) for line in lines if line.strip()]
