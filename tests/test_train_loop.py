"""coca.train: a tiny run learns, resume continues the same schedule exactly, bundles load."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import coca
from coca.data import GeneratedDataConfig
from coca.optim import OptimConfig, learning_rate
from coca.train import TrainConfig, train
from coca.train_state import ResumeError, read_log


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest (and steadiest on a shared CPU) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(output: Path, **changes: object) -> TrainConfig:
    config = TrainConfig(
        output=output,
        model="coca_tiny",
        data=GeneratedDataConfig(
            pool_size=24, width=40, height=30, captions_per_image=2, workers=1
        ),
        steps=8,
        batch_size=8,
        optim=OptimConfig(lr=3e-3, warmup_steps=2),
        device="cpu",
        checkpoint_every=4,
        log_every=1,
    )
    return dataclasses.replace(config, **changes)


def test_train_tiny_run_lowers_loss(tmp_path: Path) -> None:
    data = GeneratedDataConfig(
        pool_size=24, width=40, height=30, workers=1, partial_captions_per_image=2, mirror=True
    )
    optim = OptimConfig(lr=3e-3, warmup_steps=3)
    config = tiny_config(tmp_path / "bundle", steps=30, optim=optim, data=data)
    result = train(config)
    losses = [record["loss"] for record in read_log(result.run_dir)]
    assert result.finished and result.steps_done == 30 and len(losses) == 30
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 1.0, f"loss did not fall: {first:.3f} -> {last:.3f}"


def test_train_writes_a_bundle_that_loads_and_captions(tmp_path: Path) -> None:
    result = train(tiny_config(tmp_path / "bundle", steps=2))
    model = coca.load(result.bundle)
    assert model.config.vision.image_size == 32
    assert model.tokenizer.vocab_size == model.config.vocab_size  # the world's word vocabulary
    assert (result.bundle / "model.safetensors").is_file()
    from PIL import Image

    captions = model.caption([Image.new("RGB", (64, 48), "red")], generation_type="greedy")
    assert len(captions) == 1 and isinstance(captions[0], str)


def test_train_resume_continues_the_same_schedule(tmp_path: Path) -> None:
    straight = train(tiny_config(tmp_path / "straight"))
    first = train(tiny_config(tmp_path / "split", stop_after=4))
    assert not first.finished and first.steps_done == 4
    assert not (tmp_path / "split" / "model.safetensors").exists()
    second = train(tiny_config(tmp_path / "split", resume=True))
    assert second.finished and second.steps_done == 8
    expected, got = read_log(straight.run_dir), read_log(second.run_dir)
    assert [r["step"] for r in got] == list(range(1, 9))
    for a, b in zip(expected, got, strict=True):
        assert a["lr"] == b["lr"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-6)
    model_a, model_b = coca.load(straight.bundle), coca.load(second.bundle)
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name, value in state_a.items():
        torch.testing.assert_close(value, state_b[name], rtol=0, atol=0, msg=name)


def test_train_refuses_to_overwrite_a_run_without_resume(tmp_path: Path) -> None:
    train(tiny_config(tmp_path / "bundle", steps=4, stop_after=2))
    with pytest.raises(ResumeError, match="--resume"):
        train(tiny_config(tmp_path / "bundle", steps=4))


def test_train_resume_refuses_a_changed_schedule(tmp_path: Path) -> None:
    train(tiny_config(tmp_path / "bundle", steps=4, stop_after=2))
    with pytest.raises(ResumeError, match="steps"):
        train(tiny_config(tmp_path / "bundle", steps=6, resume=True))


def test_train_resume_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ResumeError, match="nothing to resume"):
        train(tiny_config(tmp_path / "bundle", resume=True))


def test_learning_rate_warms_up_then_follows_the_cosine() -> None:
    optim = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.0)
    rates = [learning_rate(step, 110, optim, 0.0) for step in range(110)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[10] == pytest.approx(1.0)
    assert rates[60] == pytest.approx(0.5)  # half way through the cosine
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))
    assert rates[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))


def test_learning_rate_time_budget_moves_the_cosine_along() -> None:
    optim = OptimConfig(lr=1.0, warmup_steps=0, min_lr_ratio=0.1)
    assert learning_rate(10, 1000, optim, time_fraction=1.0) == pytest.approx(0.1)
    assert learning_rate(10, 1000, optim, time_fraction=0.5) == pytest.approx(0.55)


def test_train_config_rejects_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="steps"):
        tiny_config(tmp_path, steps=0)
    with pytest.raises(ValueError, match="precision"):
        tiny_config(tmp_path, precision="fp8")


def test_train_time_budget_ends_the_run_with_a_bundle(tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "bundle", steps=100_000, time_budget_s=0.5, log_every=5)
    result = train(config)
    assert result.finished and 0 < result.steps_done < 100_000
    assert result.train_seconds < 5
    assert (result.bundle / "model.safetensors").is_file()
    last = read_log(result.run_dir)[-1]  # logged even though the clock ended it off a log step
    assert last["step"] == result.steps_done and last["loss"] == result.final_loss


@pytest.mark.slow  # a CLIP-vocabulary (49,408) decoder head, even at tiny width
def test_train_fine_tunes_an_open_clip_folder_on_captioned_photos(tmp_path: Path) -> None:
    from PIL import Image

    from coca.config import get_config
    from coca.folder_data import FolderDataConfig
    from coca.model import CoCa
    from tests.conftest import save_open_clip_folder

    config = get_config("coca_tiny")
    torch.manual_seed(0)
    source = save_open_clip_folder(
        CoCa(config).state_dict(), config.to_open_clip(), tmp_path / "open_clip"
    )
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, color in (("a.jpg", "red"), ("b.png", "blue")):
        Image.new("RGB", (80, 60), color).save(photos / name)
    captions = photos / "captions.csv"
    captions.write_text("file,caption\na.jpg,a red wall\nb.png,the blue sea!\n", encoding="utf-8")
    run = tiny_config(
        tmp_path / "tuned",
        init=str(source),
        data=FolderDataConfig(captions_file=captions, workers=1),
        steps=3,
        batch_size=4,
    )
    result = train(run)
    tuned = coca.load(result.bundle)
    assert tuned.tokenizer.vocab_size == 49408  # the checkpoint's own CLIP tokenizer
    assert tuned.preprocess.config.resize_mode == "shortest"  # and its own preprocessing
    before = coca.load(source).state_dict()["text_decoder.text_projection"]
    after = tuned.state_dict()["text_decoder.text_projection"]
    assert not torch.allclose(before.half().float(), after.float())
