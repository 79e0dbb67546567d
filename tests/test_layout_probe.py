"""coca.layout_probe: targets from scene graphs, mirroring, the masked loss, training with it."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from coca.data import GeneratedBatches, GeneratedDataConfig, render_scenes
from coca.layout_probe import LAYOUT_SLOTS, LayoutProbe, layout_target, mirror_layout
from coca.optim import OptimConfig
from coca.recipe import build_model
from coca.train import TrainConfig, train
from coca.train_state import read_log
from coca.world.scene import COLORS, KINDS, Scene, SceneObject


def _slot(kind: str, color: str | None) -> int:
    """Index of the x of a group, counted independently of the module's table."""
    if color is None:
        return 2 * (len(KINDS) * len(COLORS) + KINDS.index(kind))
    return 2 * (KINDS.index(kind) * len(COLORS) + COLORS.index(color))


def test_layout_target_holds_group_and_kind_centres_and_nan_elsewhere() -> None:
    scene = Scene(
        "grass",
        (
            SceneObject("car", "red", "small", 0.2, 0.7),
            SceneObject("car", "blue", "small", 0.6, 0.5),
            SceneObject("tree", "green", "large", 0.8, 0.4),
        ),
    )
    target = layout_target(scene)
    assert target.shape == (LAYOUT_SLOTS,)
    expected = {
        _slot("car", "red"): (0.2, 0.7),
        _slot("car", "blue"): (0.6, 0.5),
        _slot("tree", "green"): (0.8, 0.4),
        _slot("car", None): (0.4, 0.6),  # both cars
        _slot("tree", None): (0.8, 0.4),
    }
    for slot, (x, y) in expected.items():
        assert target[slot] == pytest.approx(x) and target[slot + 1] == pytest.approx(y)
    present = {s for slot in expected for s in (slot, slot + 1)}
    absent = [i for i in range(LAYOUT_SLOTS) if i not in present]
    assert np.isnan(target[absent]).all()


def test_mirror_layout_flips_x_of_flipped_rows_only() -> None:
    targets = torch.tensor([[0.2, 0.7, float("nan"), float("nan")], [0.3, 0.4, 0.9, 0.1]])
    flipped = mirror_layout(targets, torch.tensor([True, False]))
    assert flipped[0, 0] == pytest.approx(0.8) and flipped[0, 1] == pytest.approx(0.7)
    assert torch.isnan(flipped[0, 2:]).all()
    assert torch.equal(flipped[1], targets[1])


def test_layout_loss_ignores_absent_slots_and_is_zero_when_exact() -> None:
    torch.manual_seed(0)
    probe = LayoutProbe(embed_dim=6)
    features = torch.randn(3, 6)
    targets = torch.full((3, LAYOUT_SLOTS), float("nan"))
    targets[:, :4] = torch.rand(3, 4)
    with torch.no_grad():
        predicted = probe.head(features)
        exact = targets.clone()
        exact[:, :4] = predicted[:, :4] + 0.5  # the loss compares against centres - 0.5
    assert probe.loss(features, exact).item() == pytest.approx(0.0, abs=1e-10)
    loss = probe.loss(features, targets)
    with torch.no_grad():
        probe.head.weight[10:] += 5.0  # only absent slots change
    assert probe.loss(features, targets).item() == pytest.approx(loss.item(), rel=1e-6)


def test_generated_batches_carry_mirrored_layout_targets() -> None:
    model = build_model("coca_tiny", None, 0)
    config = GeneratedDataConfig(
        pool_size=16, width=40, height=30, workers=1, mirror=True, mirror_twins=0.5,
        layout_probe=1.0,
    )  # fmt: skip
    pool = render_scenes(config, model.preprocess, model.tokenizer)
    assert pool.layouts is not None and pool.layouts.shape == (16, LAYOUT_SLOTS)
    batches = GeneratedBatches(config, model.tokenizer, model.preprocess, 8, 0, torch.device("cpu"))
    batch = batches.batch(3)
    assert batch.layouts is not None and batch.layouts.shape == (8, LAYOUT_SLOTS)
    # rows 4..7 are mirrored twins of rows 0..3: same groups present, x mirrored, y kept
    first, twin = batch.layouts[:4], batch.layouts[4:]
    assert torch.equal(torch.isnan(first), torch.isnan(twin))
    present = ~torch.isnan(first)
    assert torch.allclose((first[:, 0::2] + twin[:, 0::2])[present[:, 0::2]], torch.tensor(1.0))
    assert torch.equal(first[:, 1::2][present[:, 1::2]], twin[:, 1::2][present[:, 1::2]])


def _probe_config(output: Path, **changes: object) -> TrainConfig:
    data = GeneratedDataConfig(
        pool_size=32, width=40, height=30, captions_per_image=2, workers=1, mirror=True,
        layout_probe=4.0,
    )  # fmt: skip
    config = TrainConfig(
        output=output, model="coca_tiny", data=data, steps=40, batch_size=16,
        optim=OptimConfig(lr=3e-3, warmup_steps=3), device="cpu", checkpoint_every=20,
        log_every=1,
    )  # fmt: skip
    return dataclasses.replace(config, **changes)


def test_training_with_the_layout_probe_lowers_its_loss_and_resumes(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    result = train(_probe_config(tmp_path / "run", stop_after=20))
    records = read_log(result.run_dir)
    assert all("layout" in r and math.isfinite(r["layout"]) for r in records)
    resumed = train(_probe_config(tmp_path / "run", resume=True))
    assert resumed.finished and resumed.steps_done == 40
    layout = [r["layout"] for r in read_log(resumed.run_dir)]
    assert len(layout) == 40
    first, last = sum(layout[:5]) / 5, sum(layout[-5:]) / 5
    assert last < 0.7 * first, f"layout loss did not fall: {first:.4f} -> {last:.4f}"
    payload = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=True)
    assert set(payload["extra"]) == {"layout_probe"}
    # the bundle is a plain CoCa: no probe keys
    from safetensors.torch import load_file

    keys = load_file(str(resumed.bundle / "model.safetensors")).keys()
    assert not any("layout" in key or "probe" in key for key in keys)
