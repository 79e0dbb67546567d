"""The recipe of the embedded default model: its preset, the world's tokenizer and preprocessing.

`build_model` gives the trainer either a fresh preset model fitted to the procedural world's
word-level vocabulary, or any `coca.load` source to fine-tune with its own tokenizer/preprocessing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from coca.config import PRESETS, CocaConfig, DecoderConfig, TextConfig, VisionConfig
from coca.model import CoCa

# The embedded default model (7.1M parameters, 14 MB as fp16): small enough to caption >= 50
# photos/s on a 2-core CPU, big enough for the procedural world. 160x120 renders are squashed to
# 128 px, so 640x480 library photos get the same geometry; 16 px patches give 64 patches (a small
# object covers about 1x1.5 of them); 32 pooler queries = 1 latent + 31 image tokens for the
# decoder. Vocabulary size, special ids and context length come from the word-level tokenizer.
TRAINING_PRESETS: dict[str, CocaConfig] = {
    "coca_default_small": CocaConfig(
        embed_dim=192,
        vision=VisionConfig(
            image_size=128,
            patch_size=16,
            width=192,
            layers=6,
            heads=3,
            n_queries=32,
            pooler_heads=3,
        ),
        text=TextConfig(context_length=32, width=192, heads=3, layers=3),
        decoder=DecoderConfig(context_length=32, width=192, heads=3, layers=3),
    ),
}
WORLD_CONTEXT_LENGTH = 32  # the grammar's longest caption is well under 30 words


def training_config(name: str) -> CocaConfig:
    """A preset from TRAINING_PRESETS or coca.config.PRESETS."""
    if name in TRAINING_PRESETS:
        return TRAINING_PRESETS[name]
    if name in PRESETS:
        return PRESETS[name]
    known = sorted({*TRAINING_PRESETS, *PRESETS})
    raise ValueError(f"unknown model preset {name!r}; choose one of {known}")


def world_tokenizer(context_length: int = WORLD_CONTEXT_LENGTH) -> Any:
    """The word-level tokenizer of the procedural world's caption grammar."""
    from coca.tokenizer import Tokenizer
    from coca.world.language import vocabulary

    return Tokenizer.build_word_level(vocabulary(), context_length=context_length)


def fit_config_to_tokenizer(config: CocaConfig, tokenizer: Any) -> CocaConfig:
    """The preset with the tokenizer's vocabulary, special ids and context length."""
    context = tokenizer.context_length
    text = dataclasses.replace(
        config.text,
        vocab_size=tokenizer.vocab_size,
        context_length=context,
        pad_id=tokenizer.pad_token_id,
    )
    decoder = dataclasses.replace(config.decoder, context_length=context)
    return dataclasses.replace(
        config,
        text=text,
        decoder=decoder,
        sot_token_id=tokenizer.sot_token_id,
        eot_token_id=tokenizer.eot_token_id,
    )


def world_preprocess(image_size: int) -> Any:
    """Squash-resize (no crop: every object stays in frame) with CLIP's mean/std."""
    from coca.preprocess import Preprocess, PreprocessConfig

    return Preprocess(PreprocessConfig(image_size=image_size, resize_mode="squash"))


def build_model(preset: str, init: str | None = None, seed: int = 0) -> CoCa:
    """A fresh `preset` model with the world's tokenizer, or the `init` checkpoint to fine-tune."""
    if init is not None:
        from coca.checkpoint import load

        return load(init).float().train()
    tokenizer = world_tokenizer()
    model_config = fit_config_to_tokenizer(training_config(preset), tokenizer)
    torch.manual_seed(seed)
    model = CoCa(model_config)
    model.tokenizer = tokenizer
    model.preprocess = world_preprocess(model_config.vision.image_size)
    model.source = f"trained:{preset}"
    return model.train()
