"""Cost of the catalog's content hash per file: format 2 against the first (legacy) format.

    python benchmarks/bench_hash.py          # this 2-core CPU, a few seconds

Random bytes stand for compressed photos (JPEG-like: sampled) and a BMP header in front of them
for uncompressed scans (hashed whole). Times `content_hash_of_bytes` (what the decode workers
run on the bytes they already hold), `content_hash` and `legacy_content_hash` (what the scan
runs on a file path), median of 200 calls, in microseconds; files are in the page cache.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.hashing import content_hash, content_hash_of_bytes, legacy_content_hash  # noqa: E402

SIZES = {"300 KB": 300_000, "5 MB": 5_000_000}
KINDS = {"JPEG-like": b"\xff\xd8\xff\xe0", "BMP": b"BM"}


def median_us(call, repeats: int = 200) -> float:  # noqa: ANN001 - any zero-argument callable
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return round(1e6 * statistics.median(times), 1)


def measure(label: str, data: bytes, path: Path) -> dict[str, object]:
    return {
        "file": label,
        "format 2, from bytes": median_us(lambda: content_hash_of_bytes(data)),
        "format 2, from path": median_us(lambda: content_hash(path)),
        "legacy, from path": median_us(lambda: legacy_content_hash(path)),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        for kind, magic in KINDS.items():
            for label, size in SIZES.items():
                data = magic + os.urandom(size - len(magic))
                path = Path(folder) / f"{kind}-{size}.bin"
                path.write_bytes(data)
                print(json.dumps(measure(f"{kind}, {label}", data, path)))


if __name__ == "__main__":
    main()
