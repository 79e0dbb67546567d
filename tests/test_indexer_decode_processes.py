"""Decoding in worker processes gives what the thread pool gives, and dies with its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from indexer.decode import DecodeConfig, decode_all
from tests.indexer_support import make_bad_corpus, write_library

REPO = Path(__file__).resolve().parents[1]


def test_decode_processes_match_threads_on_the_bad_corpus(tmp_path: Path) -> None:
    corpus = make_bad_corpus(tmp_path)
    paths = [tmp_path / item.relative_path for item in corpus]
    base = DecodeConfig(image_size=32, workers=2, chunk_size=4, prefetch=8)
    threads = list(decode_all(paths, DecodeConfig(**{**base.__dict__, "backend": "threads"})))
    processes = list(decode_all(paths, DecodeConfig(**{**base.__dict__, "backend": "processes"})))
    assert [r.path for r in processes] == paths
    assert sum(r.image is None for r in processes) >= 5  # the corpus's bad files stay errors
    for by_thread, by_process in zip(threads, processes, strict=True):
        assert by_process.error == by_thread.error, by_thread.path
        if by_thread.image is None:
            assert by_process.image is None
            continue
        assert by_process.image is not None
        assert torch.equal(by_process.image.pixels, by_thread.image.pixels), by_thread.path
        assert by_process.image.pixels.shape == (3, 32, 32)
        assert (by_process.image.width, by_process.image.height) == (
            by_thread.image.width,
            by_thread.image.height,
        )
        assert by_process.image.taken_at == by_thread.image.taken_at
        assert by_process.image.camera == by_thread.image.camera


def test_decode_backend_auto_uses_processes_only_with_many_workers() -> None:
    assert not DecodeConfig(workers=2).uses_processes()
    assert DecodeConfig(workers=16).uses_processes()
    assert not DecodeConfig(workers=16, backend="threads").uses_processes()
    assert DecodeConfig(workers=1, backend="processes").uses_processes()
    with pytest.raises(ValueError, match="backend"):
        DecodeConfig(backend="gpu")
    with pytest.raises(ValueError, match="at least 1"):
        DecodeConfig(chunk_size=0)


def test_decode_processes_refuse_an_unpicklable_prepare(tmp_path: Path) -> None:
    paths = write_library(tmp_path, 2)
    config = DecodeConfig(image_size=16, workers=2, backend="processes")
    with pytest.raises(ValueError, match="picklable"):
        list(decode_all(paths, config, lambda image: image))


_CHILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from indexer.decode import DecodeConfig, decode_all
paths = sorted(Path(sys.argv[2]).rglob("*.jpg"))
config = DecodeConfig(image_size=16, workers=2, backend="processes", chunk_size=1, prefetch=2)
results = decode_all(paths, config)
next(results)
print("ready", flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux")
def test_decode_processes_die_when_the_indexer_is_killed(tmp_path: Path) -> None:
    write_library(tmp_path, 8)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(REPO), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        children = Path(f"/proc/{child.pid}/task/{child.pid}/children").read_text().split()
        workers = [int(pid) for pid in children]
        assert len(workers) == 2
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in workers)
    finally:
        child.kill()
        child.wait(10)


def _torch_threads(path: Path, config: DecodeConfig, prepare: object) -> int:
    return torch.get_num_threads()


def test_decode_processes_run_torch_on_one_thread(tmp_path: Path) -> None:
    """Each worker resizes with a torch kernel; one thread each, as every core has a worker."""
    from coca.preprocess import Preprocess, PreprocessConfig
    from indexer.decode import map_files

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the parent's setting must not reach the workers
    paths = [tmp_path / f"{index}.jpg" for index in range(6)]
    config = DecodeConfig(workers=2, backend="processes", chunk_size=2)
    prepare = Preprocess(PreprocessConfig(image_size=32)).resize_for_model
    try:
        assert set(map_files(paths, config, prepare, _torch_threads)) == {1}
    finally:
        torch.set_num_threads(threads)
