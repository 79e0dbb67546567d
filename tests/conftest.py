"""Shared fixtures: reference open_clip CoCa models saved as open_clip folders, and tiny models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from coca.config import CocaConfig, get_config
from coca.model import CoCa

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SOT, EOT = 49406, 49407


def save_open_clip_folder(
    state_dict: dict[str, torch.Tensor],
    model_cfg: dict[str, Any],
    folder: Path,
    weights: str = "open_clip_model.safetensors",
) -> Path:
    """Write an open_clip-style folder (as open_clip's save_for_hf / the hub lay it out)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "mean": list(OPENAI_MEAN),
            "std": list(OPENAI_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    if weights.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(tensors, str(folder / weights))
    else:
        torch.save(tensors, folder / weights)
    return folder


def build_open_clip(model_cfg: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """open_clip 3.3.0's CoCa with random weights (pretrained=None), in eval mode."""
    import open_clip

    torch.manual_seed(seed)
    cfg = {k: v for k, v in model_cfg.items() if k != "custom_text"}
    model = open_clip.CoCa(**cfg).eval()
    # open_clip never initialises the decoder's vocabulary projection (torch.empty, often zeros),
    # which would make every logit 0; give it values so the logits comparison means something.
    with torch.no_grad():
        model.text_decoder.text_projection.normal_(std=model.text_decoder.width**-0.5)
    return model


def make_texts(lengths: list[int], context: int, seed: int = 0, vocab: int = 49405) -> torch.Tensor:
    """Padded token ids (B, context): <sot> random tokens <eot> then pad 0. The random tokens
    include id 0 ("!", the pad id) mid-caption so open_clip's shifted pad mask is exercised."""
    g = torch.Generator().manual_seed(seed)
    text = torch.zeros(len(lengths), context, dtype=torch.long)
    for row, n in enumerate(lengths):
        body = torch.randint(1, vocab, (n - 2,), generator=g)
        if n > 4:
            body[n // 3] = 0
        text[row, :n] = torch.cat([torch.tensor([SOT]), body, torch.tensor([EOT])])
    return text


@pytest.fixture(scope="session")
def tiny_config() -> CocaConfig:
    return get_config("coca_tiny")


@pytest.fixture()
def tiny_model(tiny_config: CocaConfig) -> CoCa:
    torch.manual_seed(0)
    return CoCa(tiny_config).eval()


@pytest.fixture(scope="session")
def tiny_reference(tiny_config: CocaConfig) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(open_clip CoCa, its model_cfg) for the tiny config."""
    model_cfg = tiny_config.to_open_clip()
    return build_open_clip(model_cfg, seed=1), model_cfg


@pytest.fixture(scope="session")
def tiny_open_clip_folder(
    tiny_reference: tuple[torch.nn.Module, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    model, model_cfg = tiny_reference
    folder = tmp_path_factory.mktemp("tiny_open_clip")
    return save_open_clip_folder(model.state_dict(), model_cfg, folder)
