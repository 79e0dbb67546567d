"""Parity with open_clip 3.3.0: configs, state-dict layout, and fp32 outputs after coca.load."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

import coca
from coca.config import PRESETS, CocaConfig
from coca.model import CoCa
from tests.conftest import build_open_clip, make_texts, save_open_clip_folder

open_clip = pytest.importorskip("open_clip")

TOLERANCE = 1e-5


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


def assert_outputs_match(
    model: CoCa, reference: torch.nn.Module, image_size: int, context: int = 76
) -> None:
    """encode_image, encode_text and forward of ours against one reference forward."""
    torch.manual_seed(3)
    images = torch.randn(3, 3, image_size, image_size)
    texts = make_texts([5, 12, 30], context=context, seed=4)  # padded: the pad mask matters
    with torch.no_grad():
        expected = reference(images, texts)  # its features are its encode_image / encode_text
        got = model(images, texts)
        pairs = {
            "encode_image": (model.encode_image(images), expected["image_features"]),
            "encode_text": (model.encode_text(texts), expected["text_features"]),
            "image_features": (got.image_features, expected["image_features"]),
            "text_features": (got.text_features, expected["text_features"]),
            "logits": (got.logits, expected["logits"]),
            "logit_scale": (got.logit_scale, expected["logit_scale"]),
        }
    for name, (ours, ref) in pairs.items():
        assert ours.shape == ref.shape, name
        assert relative_error(ours, ref) <= TOLERANCE, name
    assert torch.equal(got.labels, expected["labels"])
    if "logit_bias" in expected:
        assert torch.equal(got.logit_bias, expected["logit_bias"])
    else:
        assert got.logit_bias is None


@pytest.fixture(scope="module")
def b32_reference() -> tuple[torch.nn.Module, dict[str, Any]]:
    """open_clip's own coca_ViT-B-32 (built from its model_configs json), random weights."""
    torch.manual_seed(0)
    model_cfg = open_clip.get_model_config("coca_ViT-B-32")
    model = build_open_clip(model_cfg, seed=0)
    return model, model_cfg


@pytest.mark.parametrize("name", ["coca_ViT-B-32", "coca_ViT-L-14"])
def test_config_presets_match_open_clip_json(name: str) -> None:
    assert CocaConfig.from_open_clip(open_clip.get_model_config(name)) == PRESETS[name]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_round_trips_through_open_clip_and_dict(name: str) -> None:
    config = PRESETS[name]
    assert CocaConfig.from_open_clip(config.to_open_clip()) == config
    assert CocaConfig.from_dict(config.to_dict()) == config


def test_config_rejects_unsupported_open_clip_options() -> None:
    cfg = PRESETS["coca_tiny"].to_open_clip()
    cfg["text_cfg"]["hf_model_name"] = "roberta-base"
    with pytest.raises(ValueError, match="hf_model_name"):
        CocaConfig.from_open_clip(cfg)


def test_model_state_dict_layout_matches_open_clip_tiny(tiny_reference: Any) -> None:
    reference, _ = tiny_reference
    with torch.device("meta"):
        ours = CoCa(PRESETS["coca_tiny"])
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected


def test_model_state_dict_layout_matches_open_clip_b32(b32_reference: Any) -> None:
    reference, _ = b32_reference
    with torch.device("meta"):
        ours = CoCa(PRESETS["coca_ViT-B-32"])
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected
    assert sum(v.numel() for v in ours.state_dict().values()) == pytest.approx(253.6e6, rel=1e-3)


def test_parity_tiny_safetensors_folder(tiny_reference: Any, tiny_open_clip_folder: Path) -> None:
    reference, _ = tiny_reference
    model = coca.load(tiny_open_clip_folder)
    assert model.config == PRESETS["coca_tiny"]
    assert_outputs_match(model, reference, image_size=32)


def test_parity_tiny_bin_wrapped_state_dict(tiny_reference: Any, tmp_path: Path) -> None:
    """A DDP training checkpoint: {"state_dict": {"module.<key>": ...}} with a 1-d logit_scale."""
    reference, model_cfg = tiny_reference
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    state["module.logit_scale"] = state["module.logit_scale"].reshape(1)
    folder = tmp_path / "bin"
    save_open_clip_folder({}, model_cfg, folder, weights="open_clip_pytorch_model.bin")
    torch.save({"state_dict": state, "epoch": 3}, folder / "open_clip_pytorch_model.bin")
    model = coca.load(folder)
    assert model.logit_scale.shape == ()
    assert_outputs_match(model, reference, image_size=32)


def test_parity_tiny_variant_quick_gelu_logit_bias_nonscalar_scale(tmp_path: Path) -> None:
    config = dataclasses.replace(
        PRESETS["coca_tiny"], quick_gelu=True, init_logit_bias=-10.0, nonscalar_logit_scale=True
    )
    model_cfg = config.to_open_clip()
    reference = build_open_clip(model_cfg, seed=2)
    folder = save_open_clip_folder(reference.state_dict(), model_cfg, tmp_path / "variant")
    model = coca.load(folder)
    assert model.config == config
    assert model.logit_scale.shape == (1,) and model.logit_bias is not None
    assert_outputs_match(model, reference, image_size=32)


@pytest.mark.slow
def test_parity_b32_safetensors_folder(b32_reference: Any, tmp_path: Path) -> None:
    reference, model_cfg = b32_reference
    folder = save_open_clip_folder(reference.state_dict(), model_cfg, tmp_path / "b32")
    model = coca.load(folder)
    assert model.config == PRESETS["coca_ViT-B-32"]
    assert_outputs_match(model, reference, image_size=224, context=40)
