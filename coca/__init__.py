"""coca: a CoCa model (contrastive latents + captioning) compatible with open_clip checkpoints.

import coca
model = coca.load("laion/CoCa-ViT-B-32-laion2B-s13B-b90k")   # or a folder, or "default"
model.caption([pil_image])
"""

from coca.checkpoint import CheckpointError, load, save_bundle
from coca.config import PRESETS, CocaConfig, DecoderConfig, TextConfig, VisionConfig, get_config
from coca.generate import DecodingConfig
from coca.identity import ModelIdentity, model_identity
from coca.loss import CocaLoss, CocaLossOutput
from coca.model import CoCa, CocaOutput, ImageEncoding
from coca.preprocess import Preprocess, PreprocessConfig
from coca.tokenizer import Tokenizer

__all__ = [
    "PRESETS",
    "CheckpointError",
    "CoCa",
    "CocaConfig",
    "CocaLoss",
    "CocaLossOutput",
    "CocaOutput",
    "DecoderConfig",
    "DecodingConfig",
    "ImageEncoding",
    "ModelIdentity",
    "Preprocess",
    "PreprocessConfig",
    "TextConfig",
    "Tokenizer",
    "VisionConfig",
    "get_config",
    "load",
    "model_identity",
    "save_bundle",
]
