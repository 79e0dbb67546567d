"""End-to-end `coca-search train / caption / eval` with the tiny preset, including bad input."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from coca.model import CoCa
from coca.world import render_scene, scene_for_seed
from coca_search import cli


@pytest.fixture(scope="module")
def runner() -> Iterator[CliRunner]:
    cli._register_commands()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield CliRunner()
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bundle(runner: CliRunner, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("train") / "bundle"
    args = ["train", str(output), "--model", "coca_tiny", "--pool-size", "16"]
    args += ["--render-size", "40x30", "--steps", "3", "--batch-size", "4", "--device", "cpu"]
    args += ["--workers", "1", "--log-every", "1", "--warmup-steps", "1", "--mirror"]
    args += ["--partial-captions", "2"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert "trained 3 steps" in result.stdout
    assert "step 3/3 loss" in result.stderr  # plain progress lines when not on a terminal
    return output


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "scene.png"
    render_scene(scene_for_seed(5), 64, 48).save(path)
    return path


def test_cli_train_writes_a_bundle_and_a_loss_log(bundle: Path) -> None:
    assert (bundle / "model.safetensors").is_file() and (bundle / "tokenizer.json").is_file()
    log = (bundle.parent / "bundle.run" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3]


def test_cli_caption_prints_one_line_per_image(
    runner: CliRunner, bundle: Path, photo: Path
) -> None:
    args = ["caption", str(photo), str(photo), "--model", str(bundle), "--decoding", "greedy"]
    result = runner.invoke(cli.app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{photo}\t") for line in lines)


def test_cli_caption_json_and_beam_search(runner: CliRunner, bundle: Path, photo: Path) -> None:
    args = ["caption", str(photo), "--model", str(bundle), "--json", "--device", "cpu"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["file"] == str(photo) and isinstance(record["caption"], str)


def test_cli_caption_reports_missing_and_corrupt_images(
    runner: CliRunner, bundle: Path, photo: Path, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 truncated")
    missing = tmp_path / "missing.png"
    args = ["caption", str(missing), str(photo), str(corrupt), "--model", str(bundle)]
    result = runner.invoke(cli.app, [*args, "--decoding", "greedy", "--device", "cpu"])
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{photo}\t")  # the good image is still captioned
    assert f"{missing}: no such file" in result.stderr
    assert f"{corrupt}: not a readable image" in result.stderr
    assert "Traceback" not in result.output


def test_cli_caption_bad_model_is_a_one_line_error(
    runner: CliRunner, photo: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken_bundle"
    broken.mkdir()
    (broken / "config.json").write_text("{ truncated")
    result = runner.invoke(cli.app, ["caption", str(photo), "--model", str(broken)])
    assert result.exit_code == 2
    assert "cannot load model" in result.stderr and "Traceback" not in result.output
    result = runner.invoke(cli.app, ["caption", str(photo), "--decoding", "sampling"])
    assert result.exit_code == 2 and "--decoding" in result.stderr


def test_cli_eval_json_report(runner: CliRunner, bundle: Path) -> None:
    args = ["eval", "--model", str(bundle), "--count", "12", "--render-size", "64x48"]
    result = runner.invoke(cli.app, [*args, "--workers", "1", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 12 and "caption" in report and "targets_met" in report
    assert 0 <= report["image_to_text_recall_at_1"] <= 1


def test_cli_eval_refuses_the_training_split(runner: CliRunner, bundle: Path) -> None:
    result = runner.invoke(cli.app, ["eval", "--model", str(bundle), "--seed", "0"])
    assert result.exit_code == 2 and "training split" in result.stderr


def test_cli_train_flag_errors_are_clear(runner: CliRunner, tmp_path: Path) -> None:
    out = str(tmp_path / "b")
    result = runner.invoke(cli.app, ["train", out, "--data", "folder"])
    assert result.exit_code == 2 and "--captions" in result.stderr
    result = runner.invoke(cli.app, ["train", out, "--render-size", "big"])
    assert result.exit_code == 2 and "160x120" in result.stderr
    result = runner.invoke(cli.app, ["train", out, "--double-size-fraction", "2"])
    assert result.exit_code == 2 and "double_size_fraction" in result.stderr
    args = ["train", out, "--model", "coca_tiny", "--resume", "--device", "cpu"]
    result = runner.invoke(cli.app, [*args, "--pool-size", "4", "--workers", "1"])
    assert result.exit_code == 2 and "nothing to resume" in result.stderr
    assert "Traceback" not in result.output


def _png_claiming_size(path: Path, width: int, height: int) -> None:
    """A PNG of a few bytes whose header claims width x height: what Pillow's decompression-bomb
    check sees, without the test writing (or decoding) a huge image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    png = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png)


def _record_model_inputs(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Every image batch (B, 3, S, S) that reaches CoCa.generate, in call order."""
    inputs: list[torch.Tensor] = []
    generate = CoCa.generate

    def recording(self: CoCa, image: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        inputs.append(image.detach().clone())
        return generate(self, image, *args, **kwargs)

    monkeypatch.setattr(CoCa, "generate", recording)
    return inputs


def test_cli_caption_applies_exif_orientation(
    runner: CliRunner, bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = render_scene(scene_for_seed(7), 64, 48)  # sides are whole JPEG blocks: rotation is
    upright, rotated = tmp_path / "upright.jpg", tmp_path / "rotated.jpg"  # near lossless
    scene.save(upright, quality=100, subsampling=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90° left; viewers turn it right to show it upright
    scene.transpose(Image.Transpose.ROTATE_90).save(rotated, quality=100, subsampling=0, exif=exif)
    inputs = _record_model_inputs(monkeypatch)
    args = ["caption", str(upright), str(rotated), "--model", str(bundle), "--batch-size", "1"]
    result = runner.invoke(cli.app, [*args, "--decoding", "greedy", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert len(inputs) == 2
    assert (inputs[0] - inputs[1]).abs().mean() < 0.02  # JPEG rounding only
    captions = [line.split("\t")[1] for line in result.stdout.strip().splitlines()]
    assert captions[0] == captions[1]


def test_cli_caption_reports_a_decompression_bomb_and_captions_the_rest(
    runner: CliRunner, bundle: Path, photo: Path, tmp_path: Path
) -> None:
    bomb = tmp_path / "bomb.png"
    _png_claiming_size(bomb, 20_000, 20_000)
    other = tmp_path / "other.png"
    render_scene(scene_for_seed(6), 64, 48).save(other)
    args = ["caption", str(photo), str(bomb), str(other), "--model", str(bundle)]
    result = runner.invoke(cli.app, [*args, "--decoding", "greedy", "--device", "cpu"])
    assert result.exit_code == 1
    files = [line.split("\t")[0] for line in result.stdout.strip().splitlines()]
    assert files == [str(photo), str(other)]
    assert f"{bomb}: " in result.stderr and "too large" in result.stderr
    assert "Traceback" not in result.output


def test_cli_caption_streams_batches(
    runner: CliRunner, bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [tmp_path / f"scene{i}.png" for i in range(5)]
    for seed, path in enumerate(paths):
        render_scene(scene_for_seed(seed), 64, 48).save(path)
    opened: list[str] = []
    open_image = Image.open

    def counting_open(fp: Any, *args: Any, **kwargs: Any) -> Image.Image:
        opened.append(str(fp))
        return open_image(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    opened_by_batch: list[int] = []
    generate = CoCa.generate

    def counting_generate(self: CoCa, *args: Any, **kwargs: Any) -> torch.Tensor:
        opened_by_batch.append(len(opened))
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(CoCa, "generate", counting_generate)
    args = ["caption", *map(str, paths), "--model", str(bundle), "--batch-size", "1"]
    result = runner.invoke(cli.app, [*args, "--decoding", "greedy", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == list(map(str, paths))
    assert len(opened_by_batch) == 5
    # Decoding may run one batch ahead of the model, never the whole input.
    assert opened_by_batch[0] <= 2, opened_by_batch
