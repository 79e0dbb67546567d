"""coca.data: rendered pools, per-step batches, and the folder + captions-file dataset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import coca.scene_pool
from coca.data import (
    DataError,
    GeneratedBatches,
    GeneratedDataConfig,
    render_scenes,
    step_generator,
)
from coca.folder_data import FolderBatches, FolderDataConfig, read_caption_table
from coca.recipe import world_preprocess, world_tokenizer

CPU = torch.device("cpu")


def test_step_generator_depends_only_on_seed_and_step() -> None:
    a = torch.rand(4, generator=step_generator(3, 10))
    assert torch.equal(a, torch.rand(4, generator=step_generator(3, 10)))
    assert not torch.equal(a, torch.rand(4, generator=step_generator(3, 11)))
    assert not torch.equal(a, torch.rand(4, generator=step_generator(4, 10)))


def test_render_scenes_parallel_equals_serial(monkeypatch: pytest.MonkeyPatch) -> None:
    config = GeneratedDataConfig(pool_size=12, width=40, height=30, captions_per_image=2, workers=1)
    serial = render_scenes(config, world_preprocess(32), world_tokenizer())
    monkeypatch.setattr(coca.scene_pool, "_RENDER_CHUNK", 3)  # 4 chunks over 2 worker processes
    parallel_config = GeneratedDataConfig(
        pool_size=12, width=40, height=30, captions_per_image=2, workers=2
    )
    parallel = render_scenes(parallel_config, world_preprocess(32), world_tokenizer())
    assert serial.images.shape == (12, 32, 32, 3)  # resized for the model while rendering
    np.testing.assert_array_equal(serial.images, parallel.images)
    assert serial.captions == parallel.captions
    np.testing.assert_array_equal(serial.tokens, parallel.tokens)
    assert serial.tokens.shape[:2] == (12, 2)
    monkeypatch.setattr(
        coca.scene_pool, "_shared_memory_fits", lambda nbytes: False
    )  # tiny /dev/shm
    piped = render_scenes(parallel_config, world_preprocess(32), world_tokenizer())
    np.testing.assert_array_equal(serial.images, piped.images)
    assert serial.captions == piped.captions


def test_render_scenes_double_size_fraction_changes_only_some_images() -> None:
    plain = GeneratedDataConfig(pool_size=16, width=40, height=30, workers=1)
    mixed = GeneratedDataConfig(
        pool_size=16, width=40, height=30, workers=1, double_size_fraction=0.5
    )
    a = render_scenes(plain, world_preprocess(32)).images
    b = render_scenes(mixed, world_preprocess(32)).images
    differs = [not np.array_equal(x, y) for x, y in zip(a, b, strict=True)]
    assert 0 < sum(differs) < 16
    with pytest.raises(ValueError, match="preprocess"):
        render_scenes(mixed)


def test_render_scenes_captions_describe_their_scene() -> None:
    from coca.world import item_seed, parse_caption, scene_for_seed

    rendered = render_scenes(GeneratedDataConfig(pool_size=3, width=40, height=30, split_seed=5))
    assert rendered.images.shape == (3, 30, 40, 3) and rendered.tokens is None
    for index, texts in enumerate(rendered.captions):
        scene = scene_for_seed(item_seed(5, index))
        for text in texts:
            assert parse_caption(text).background == scene.background


def test_generated_batches_are_a_function_of_the_step() -> None:
    config = GeneratedDataConfig(pool_size=10, width=40, height=30, workers=1)
    tokenizer, preprocess = world_tokenizer(), world_preprocess(32)
    source = GeneratedBatches(config, tokenizer, preprocess, 6, seed=1, device=CPU)
    first = list(source.batches(0, 3))
    again = list(source.batches(2, 3))
    assert first[0].images.shape == (6, 3, 32, 32) and first[0].images.dtype == torch.float32
    assert first[0].tokens.shape == (6, tokenizer.context_length)
    assert torch.equal(first[2].images, again[0].images)
    assert torch.equal(first[2].tokens, again[0].tokens)
    assert not torch.equal(first[0].tokens, first[1].tokens)
    assert (first[0].tokens[:, 0] == tokenizer.sot_token_id).all()
    rows = torch.randint(10, (6,), generator=step_generator(1, 0))
    expected = preprocess.batch(source.images[rows])  # the model's own normalisation
    torch.testing.assert_close(first[0].images, expected, rtol=1e-5, atol=1e-5)


def write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        Image.new("RGB", (48, 36), (40 * index, 100, 200)).save(folder / name)


def test_read_caption_table_csv_groups_captions_and_reports_bad_rows(tmp_path: Path) -> None:
    write_images(tmp_path, ["a.png", "b.jpg"])
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "captions.csv").write_text(
        "file,caption\n"
        "a.png,a red car on the beach\n"
        "b.jpg,two blue stars\n"
        "a.png,a red car by the sea\n"
        "missing.png,a tree\n"
        "b.jpg,\n"
        "broken.jpg,a boat\n",
        encoding="utf-8",
    )
    table = read_caption_table(tmp_path / "captions.csv")
    by_name = {item.path.name: item.captions for item in table.images}
    assert by_name == {
        "a.png": ("a red car on the beach", "a red car by the sea"),
        "b.jpg": ("two blue stars",),
    }
    assert len(table.problems) == 3
    assert "line 5" in table.problems[0] and "missing.png" in table.problems[0]
    assert "line 6" in table.problems[1] and "empty caption" in table.problems[1]
    assert "broken.jpg" in table.problems[2]


def test_read_caption_table_jsonl_accepts_manifest_rows(tmp_path: Path) -> None:
    write_images(tmp_path / "photos", ["x.png", "y.png"])
    lines = [
        json.dumps({"file": "x.png", "captions": ["a green tree", "a tree on the grass"]}),
        json.dumps({"file": "y.png", "caption": "a white boat"}),
        "{not json",
        json.dumps({"caption": "no file"}),
        json.dumps(["not", "an", "object"]),
    ]
    captions = tmp_path / "manifest.jsonl"
    captions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    table = read_caption_table(captions, image_root=tmp_path / "photos")
    assert [item.captions for item in table.images] == [
        ("a green tree", "a tree on the grass"),
        ("a white boat",),
    ]
    assert table.caption_count == 3
    assert [p.split(":")[0] for p in table.problems] == [
        "manifest.jsonl line 3",
        "manifest.jsonl line 4",
        "manifest.jsonl line 5",
    ]


def test_read_caption_table_errors_name_the_fix(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("path,text\nx.png,a car\n", encoding="utf-8")
    with pytest.raises(DataError, match="'file' and 'caption'"):
        read_caption_table(tmp_path / "c.csv")
    (tmp_path / "c.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=".csv"):
        read_caption_table(tmp_path / "c.txt")
    (tmp_path / "d.csv").write_text("file,caption\nnope.png,a car\n", encoding="utf-8")
    with pytest.raises(DataError, match="no usable rows"):
        read_caption_table(tmp_path / "d.csv")


def test_folder_batches_pair_each_image_with_one_of_its_captions(tmp_path: Path) -> None:
    write_images(tmp_path, ["a.png", "b.png"])
    (tmp_path / "captions.csv").write_text(
        "file,caption\na.png,a red car\nb.png,a blue star\nb.png,two blue stars\n",
        encoding="utf-8",
    )
    tokenizer, preprocess = world_tokenizer(), world_preprocess(32)
    config = FolderDataConfig(captions_file=tmp_path / "captions.csv", workers=1)
    source = FolderBatches(config, tokenizer, preprocess, 8, seed=0, device=CPU)
    batches = list(source.batches(0, 2))
    assert len(batches) == 2 and batches[0].images.shape == (8, 3, 32, 32)
    red = preprocess(Image.open(tmp_path / "a.png"))
    allowed = {
        True: {"a red car"},
        False: {"a blue star", "two blue stars"},
    }
    for image, tokens in zip(batches[0].images, batches[0].tokens, strict=True):
        is_a = torch.allclose(image, red)
        assert tokenizer.decode(tokens) in allowed[is_a]
    again = next(iter(source.batches(1, 2)))
    assert torch.equal(again.tokens, batches[1].tokens)


def test_generated_batches_mirror_pictures_and_swap_left_and_right() -> None:
    tokenizer, preprocess = world_tokenizer(), world_preprocess(32)
    plain_config = GeneratedDataConfig(pool_size=10, width=40, height=30, workers=1)
    mirrored_config = GeneratedDataConfig(pool_size=10, width=40, height=30, workers=1, mirror=True)
    plain = GeneratedBatches(plain_config, tokenizer, preprocess, 16, seed=2, device=CPU)
    mirrored = GeneratedBatches(mirrored_config, tokenizer, preprocess, 16, seed=2, device=CPU)
    a, b = plain.batch(0), mirrored.batch(0)  # same rows and captions: same generator draws
    flipped = [not torch.equal(x, y) for x, y in zip(a.images, b.images, strict=True)]
    assert 0 < sum(flipped) < 16
    left, right = (tokenizer.encode(w)[0] for w in ("left", "right"))
    for was_flipped, x, y, t, u in zip(
        flipped, a.images, b.images, a.tokens, b.tokens, strict=True
    ):
        if was_flipped:
            torch.testing.assert_close(x.flip(-1), y)
            expected = torch.where(t == left, right, torch.where(t == right, left, t))
            assert torch.equal(u, expected)
        else:
            assert torch.equal(t, u)


def test_render_workers_do_not_hang_after_the_parent_used_torch_threads() -> None:
    # Forked workers that enter the OpenMP pool the parent started hang forever (the tokenizer
    # builds tensors); run in a child process group so a regression fails instead of hanging.
    script = textwrap.dedent(
        """
        import torch
        torch.set_num_threads(2)
        x = torch.ones(4096, 64)
        (x @ x.T).sum()  # the parent's OpenMP pool is now running
        import coca.data
        import coca.scene_pool
        coca.scene_pool._RENDER_CHUNK = 140  # 140 scenes x 8 texts x 32 ids: a parallel torch.full
        from coca.recipe import world_preprocess, world_tokenizer
        config = coca.data.GeneratedDataConfig(
            pool_size=300, width=40, height=30, workers=2, partial_captions_per_image=4
        )
        print(coca.data.render_scenes(config, world_preprocess(32), world_tokenizer()).tokens.shape)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, _ = child.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        pytest.fail("render workers hung")
    assert child.returncode == 0 and "(300, 8, 32)" in out
