"""Model configuration: frozen dataclasses, named presets, conversion from open_clip's model_cfg.

The presets mirror open_clip 3.3.0's `model_configs/coca_ViT-B-32.json` and `coca_ViT-L-14.json`;
the numbers were checked against those files. Change a config with `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

# CLIP BPE facts shared by the public checkpoints (open_clip's tokenizer).
CLIP_VOCAB_SIZE = 49408
CLIP_SOT_TOKEN_ID = 49406
CLIP_EOT_TOKEN_ID = 49407
CLIP_PAD_TOKEN_ID = 0


@dataclass(frozen=True)
class VisionConfig:
    """ViT image tower with open_clip's attentional pooler."""

    image_size: int = 224  # square input side in pixels
    patch_size: int = 32  # conv patch embedding kernel = stride
    width: int = 768  # transformer width D
    layers: int = 12
    heads: int = 12  # open_clip derives this as width // head_width (64)
    mlp_ratio: float = 4.0
    n_queries: int = 256  # pooler queries: query 0 -> image latent, the rest -> image tokens
    pooler_heads: int = 8

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}"
            )
        if self.width % self.heads:
            raise ValueError(f"vision width {self.width} must be divisible by heads {self.heads}")
        if self.n_queries < 2:
            raise ValueError(
                "n_queries must be >= 2: one latent query plus at least one image token"
            )

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        return self.grid_size**2 + 1  # patches + class token


@dataclass(frozen=True)
class TextConfig:
    """Causal text tower; a learned cls embedding is appended after the tokens."""

    context_length: int = 76  # tokens per caption (the cls slot makes 77 positions)
    vocab_size: int = CLIP_VOCAB_SIZE
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    pad_id: int = CLIP_PAD_TOKEN_ID  # drives open_clip's legacy (shifted) pad/cls key mask

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"text width {self.width} must be divisible by heads {self.heads}")


@dataclass(frozen=True)
class DecoderConfig:
    """Multimodal decoder: causal self-attention then cross-attention to image tokens, per layer."""

    context_length: int = 76  # longest prefix the decoder is trained on
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"decoder width {self.width} must be divisible by heads {self.heads}")


@dataclass(frozen=True)
class CocaConfig:
    """The whole CoCa model; the decoder predicts over the text tower's vocabulary."""

    embed_dim: int = 512  # contrastive latent size; also the width of the pooled image tokens
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    quick_gelu: bool = False  # x * sigmoid(1.702 x) instead of exact GELU (OpenAI-trained weights)
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None  # SigLIP-style bias; None = no logit_bias parameter
    nonscalar_logit_scale: bool = False  # logit_scale shaped (1,) instead of () in the state dict
    sot_token_id: int = CLIP_SOT_TOKEN_ID
    eot_token_id: int = CLIP_EOT_TOKEN_ID

    def __post_init__(self) -> None:
        # The decoder consumes the text tower's per-token outputs and cross-attends the pooled image
        # tokens with square projections, so all three widths must agree.
        if self.text.width != self.decoder.width:
            raise ValueError(
                f"text width {self.text.width} must equal decoder width {self.decoder.width}"
            )
        if self.embed_dim != self.decoder.width:
            raise ValueError(
                f"embed_dim {self.embed_dim} must equal decoder width {self.decoder.width} "
                "(the decoder cross-attends pooled image tokens of size embed_dim)"
            )
        if self.embed_dim % self.vision.pooler_heads:
            raise ValueError("embed_dim must be divisible by vision.pooler_heads")

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size

    @property
    def pad_token_id(self) -> int:
        return self.text.pad_id

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the bundle's config.json "model" entry)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CocaConfig:
        """Inverse of `to_dict`; unknown keys raise, so a typo in config.json is not ignored."""
        data = dict(data)
        try:
            vision = VisionConfig(**data.pop("vision", {}))
            text = TextConfig(**data.pop("text", {}))
            decoder = DecoderConfig(**data.pop("decoder", {}))
            return cls(vision=vision, text=text, decoder=decoder, **data)
        except TypeError as exc:
            raise ValueError(f"invalid model config: {exc}") from exc

    @classmethod
    def from_open_clip(cls, model_cfg: dict[str, Any]) -> CocaConfig:
        """From an open_clip `model_cfg` (open_clip_config.json or model_configs/coca_*.json)."""
        return _config_from_open_clip(model_cfg)

    def to_open_clip(self) -> dict[str, Any]:
        """An open_clip `model_cfg` that builds the same architecture (export and tests)."""
        return _config_to_open_clip(self)


PRESETS: dict[str, CocaConfig] = {
    "coca_ViT-B-32": CocaConfig(
        embed_dim=512,
        vision=VisionConfig(image_size=224, patch_size=32, width=768, layers=12, heads=12),
        text=TextConfig(width=512, heads=8, layers=12),
        decoder=DecoderConfig(width=512, heads=8, layers=12),
    ),
    "coca_ViT-L-14": CocaConfig(
        embed_dim=768,
        vision=VisionConfig(image_size=224, patch_size=14, width=1024, layers=24, heads=16),
        text=TextConfig(width=768, heads=12, layers=12),
        decoder=DecoderConfig(width=768, heads=12, layers=12),
    ),
    # For tests: every code path of the big models, a few hundred thousand weights outside the
    # vocabulary-sized embedding and projection (kept at CLIP's 49408 so the CLIP tokenizer fits).
    "coca_tiny": CocaConfig(
        embed_dim=32,
        vision=VisionConfig(
            image_size=32, patch_size=8, width=48, layers=2, heads=4, n_queries=6, pooler_heads=4
        ),
        text=TextConfig(width=32, heads=4, layers=2),
        decoder=DecoderConfig(width=32, heads=4, layers=2),
    ),
}


def get_config(name: str) -> CocaConfig:
    """A named preset, e.g. "coca_ViT-B-32"."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown model config {name!r}; choose one of {sorted(PRESETS)}"
        ) from None


# --- open_clip model_cfg <-> CocaConfig -----------------------------------------------------------
# open_clip's config dataclasses carry many options; we accept the ones that do not change the CoCa
# architecture (or are ignored by open_clip itself for CoCa) and refuse the rest with a clear error.

_IGNORED_VISION = {
    "output_tokens",
    "patch_dropout",
    "final_ln_after_pool",
    "timm_model_pretrained",
    "timm_pool",
    "timm_proj",
    "timm_proj_bias",
    "timm_drop",
    "timm_drop_path",
}
_REQUIRED_VISION = {
    "attentional_pool": True,
    "ls_init_value": None,
    "no_ln_pre": False,
    "pos_embed_type": "learnable",
    "pool_type": "tok",
    "act_kwargs": None,
    "norm_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "timm_model_name": None,
}
_IGNORED_TEXT = {
    "output_tokens",
    "hf_tokenizer_name",
    "tokenizer_mode",
    "tokenizer_kwargs",
    "eos_id",
    "pool_type",
    "final_ln_after_pool",
    "hf_model_pretrained",
    "hf_proj_type",
    "hf_pooler_type",
}
_REQUIRED_TEXT = {
    "embed_cls": True,
    "no_causal_mask": False,
    "proj_type": "linear",
    "proj_bias": False,
    "ls_init_value": None,
    "act_kwargs": None,
    "norm_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "hf_model_name": None,
}
# open_clip's decoder builder reads only context_length/width/heads/layers/mlp_ratio/ls_init_value;
# the other MultimodalCfg fields (vocab_size, n_queries, attn_pooler_heads, ...) are unused.
_USED_DECODER = {"context_length", "width", "heads", "layers", "mlp_ratio", "ls_init_value"}
_TOP_LEVEL = {
    "embed_dim",
    "vision_cfg",
    "text_cfg",
    "multimodal_cfg",
    "quick_gelu",
    "init_logit_scale",
    "init_logit_bias",
    "nonscalar_logit_scale",
    "custom_text",
    "pad_id",
}


def _check_section(
    name: str, cfg: dict[str, Any], used: set[str], ignored: set[str], required: dict[str, Any]
) -> None:
    unknown = set(cfg) - used - ignored - set(required)
    if unknown:
        raise ValueError(f"open_clip {name} has options this CoCa does not know: {sorted(unknown)}")
    for key, wanted in required.items():
        value = cfg.get(key, wanted)
        if value in ("default", {}) and wanted is None:
            value = None  # block_type "default" and empty kwargs mean the plain architecture
        if value != wanted:
            raise ValueError(
                f"open_clip {name}.{key}={value!r} is not supported (only {wanted!r}); "
                "this model implements the standard CoCa architecture only"
            )


def _config_from_open_clip(model_cfg: dict[str, Any]) -> CocaConfig:
    unknown = set(model_cfg) - _TOP_LEVEL
    if unknown:
        raise ValueError(f"open_clip model_cfg has unknown options: {sorted(unknown)}")
    if "multimodal_cfg" not in model_cfg:
        raise ValueError(
            "open_clip model_cfg has no multimodal_cfg: it is a CLIP, not a CoCa model"
        )
    v = dict(model_cfg.get("vision_cfg", {}))
    t = dict(model_cfg.get("text_cfg", {}))
    m = dict(model_cfg["multimodal_cfg"])
    v_used = {
        "image_size",
        "layers",
        "width",
        "head_width",
        "mlp_ratio",
        "patch_size",
        "attn_pooler_queries",
        "attn_pooler_heads",
    }
    t_used = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "pad_id"}
    _check_section("vision_cfg", v, v_used, _IGNORED_VISION, _REQUIRED_VISION)
    _check_section("text_cfg", t, t_used, _IGNORED_TEXT, _REQUIRED_TEXT)
    _check_section(
        "multimodal_cfg", m, _USED_DECODER, set(m) - _USED_DECODER, {"ls_init_value": None}
    )
    if not isinstance(v.get("layers", 12), int) or not isinstance(v.get("image_size", 224), int):
        raise ValueError("only square ViT image towers are supported (int layers and image_size)")
    width = v.get("width", 768)
    vision = VisionConfig(
        image_size=v.get("image_size", 224),
        patch_size=v.get("patch_size", 16),
        width=width,
        layers=v.get("layers", 12),
        heads=width // v.get("head_width", 64),
        mlp_ratio=v.get("mlp_ratio", 4.0),
        n_queries=v.get("attn_pooler_queries", 256),
        pooler_heads=v.get("attn_pooler_heads", 8),
    )
    text = TextConfig(
        context_length=t.get("context_length", 77),
        vocab_size=t.get("vocab_size", CLIP_VOCAB_SIZE),
        width=t.get("width", 512),
        heads=t.get("heads", 8),
        layers=t.get("layers", 12),
        mlp_ratio=t.get("mlp_ratio", 4.0),
        pad_id=t.get("pad_id", CLIP_PAD_TOKEN_ID),
    )
    decoder = DecoderConfig(
        context_length=m.get("context_length", 77),
        width=m.get("width", 512),
        heads=m.get("heads", 8),
        layers=m.get("layers", 12),
        mlp_ratio=m.get("mlp_ratio", 4.0),
    )
    init_scale = model_cfg.get("init_logit_scale", math.log(1 / 0.07))
    return CocaConfig(
        embed_dim=model_cfg["embed_dim"],
        vision=vision,
        text=text,
        decoder=decoder,
        quick_gelu=bool(model_cfg.get("quick_gelu", False)),
        init_logit_scale=float(init_scale),
        init_logit_bias=model_cfg.get("init_logit_bias"),
        nonscalar_logit_scale=bool(model_cfg.get("nonscalar_logit_scale", False)),
    )


def _config_to_open_clip(config: CocaConfig) -> dict[str, Any]:
    v, t, d = config.vision, config.text, config.decoder
    model_cfg: dict[str, Any] = {
        "embed_dim": config.embed_dim,
        "vision_cfg": {
            "image_size": v.image_size,
            "layers": v.layers,
            "width": v.width,
            "head_width": v.width // v.heads,
            "mlp_ratio": v.mlp_ratio,
            "patch_size": v.patch_size,
            "attentional_pool": True,
            "attn_pooler_queries": v.n_queries,
            "attn_pooler_heads": v.pooler_heads,
            "output_tokens": True,
        },
        "text_cfg": {
            "context_length": t.context_length,
            "vocab_size": t.vocab_size,
            "width": t.width,
            "heads": t.heads,
            "layers": t.layers,
            "mlp_ratio": t.mlp_ratio,
            "pad_id": t.pad_id,
            "embed_cls": True,
            "output_tokens": True,
        },
        "multimodal_cfg": {
            "context_length": d.context_length,
            "vocab_size": t.vocab_size,
            "width": d.width,
            "heads": d.heads,
            "layers": d.layers,
            "mlp_ratio": d.mlp_ratio,
        },
        "custom_text": True,
        "quick_gelu": config.quick_gelu,
        "init_logit_scale": config.init_logit_scale,
        "nonscalar_logit_scale": config.nonscalar_logit_scale,
    }
    if config.init_logit_bias is not None:
        model_cfg["init_logit_bias"] = config.init_logit_bias
    return model_cfg
