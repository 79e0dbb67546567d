"""Loading and saving weights: open_clip folders, Hugging Face hub ids, and our own bundle.

One entry point, `load(source)`. Keys are checked strictly before anything is loaded, and every
failure is a CheckpointError that names the file or the keys and says what to do.

Our bundle folder: config.json (model config, tokenizer facts, preprocessing), model.safetensors,
tokenizer.json.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from coca.config import CLIP_VOCAB_SIZE, CocaConfig
from coca.model import CoCa
from coca.preprocess import Preprocess, PreprocessConfig
from coca.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
BUNDLE_CONFIG = "config.json"
BUNDLE_WEIGHTS = "model.safetensors"
BUNDLE_TOKENIZER = "tokenizer.json"
BUNDLE_FORMAT = "coca-search-bundle"
BUNDLE_FORMAT_VERSION = 1
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MAX_LISTED = 12  # keys listed per category in a mismatch message


class CheckpointError(Exception):
    """A checkpoint could not be found, read, or matched to the model."""


def load(
    source: str | Path = "default",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> CoCa:
    """Load a CoCa model with its tokenizer, preprocessing, source and config attached.

    source: "default" (coca/default_model), an open_clip folder (open_clip_config.json +
    open_clip_model.safetensors or open_clip_pytorch_model.bin), our bundle folder, or a Hugging
    Face hub id ("laion/CoCa-ViT-B-32-laion2B-s13B-b90k", optionally prefixed "hf-hub:").
    dtype: parameter dtype; None means float32. The model is returned in eval mode.
    """
    folder, label = _locate(str(source))
    if (folder / BUNDLE_CONFIG).is_file() and not (folder / OPEN_CLIP_CONFIG).is_file():
        model = _load_bundle(folder)
    else:
        model = _load_open_clip(folder)
    model.source = label
    model.to(device=device, dtype=dtype or torch.float32)
    logger.info("loaded CoCa from %s (%s, %s)", label, device, dtype or torch.float32)
    return model.eval()


def _locate(source: str) -> tuple[Path, str]:
    """The local folder holding `source` and the label recorded as model.source."""
    if source == "default":
        if not (DEFAULT_MODEL_DIR / BUNDLE_CONFIG).is_file():
            raise CheckpointError(
                f"the default model is not installed ({DEFAULT_MODEL_DIR} has no {BUNDLE_CONFIG}); "
                "pass an open_clip folder, a model bundle folder or a hub id instead"
            )
        return DEFAULT_MODEL_DIR, "default"
    path = Path(source).expanduser()
    if path.is_dir():
        return path, str(path.resolve())
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the folder that contains the checkpoint")
    repo = source.removeprefix("hf-hub:")
    if source.startswith("hf-hub:") or _HUB_ID.match(source):
        return _download_from_hub(repo), f"hf-hub:{repo}"
    raise CheckpointError(
        f"no such model folder: {source!r}; pass an existing folder, a hub id (org/name) "
        "or 'default'"
    )


def _download_from_hub(repo: str) -> Path:
    """Fetch open_clip_config.json and the weights into the hub cache; return their folder."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    offline_hint = (
        f"could not get {repo!r} from the Hugging Face hub: this machine is offline "
        "(or HF_HUB_OFFLINE=1) and the files are not in the local hub cache. Download them where "
        f"there is network (`hf download {repo}`) and copy the folder here, then pass its path"
    )
    try:
        config_path = Path(hf_hub_download(repo, OPEN_CLIP_CONFIG))
    except LocalEntryNotFoundError as exc:
        raise CheckpointError(offline_hint) from exc
    except RepositoryNotFoundError as exc:
        raise CheckpointError(f"hub repository {repo!r} not found (or private)") from exc
    except Exception as exc:  # network errors come in many types (httpx, OSError, HfHubHTTPError)
        raise CheckpointError(f"could not reach the hub for {repo!r}: {exc}") from exc
    errors = []
    for name in OPEN_CLIP_WEIGHTS:
        try:
            hf_hub_download(repo, name)
            return config_path.parent
        except Exception as exc:  # try the next file name; report all below
            errors.append(exc)
    if any(isinstance(e, LocalEntryNotFoundError) for e in errors):
        raise CheckpointError(offline_hint) from errors[0]
    raise CheckpointError(f"hub repository {repo!r} has none of {OPEN_CLIP_WEIGHTS}") from errors[
        -1
    ]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"missing {path}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{path} is not valid JSON ({exc}); the file may be truncated"
        ) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a pickled .bin/.pt read with weights_only=True."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"missing weights file {path}") from exc
    except Exception as exc:  # safetensors, zipfile, pickle and torch all raise their own types
        raise CheckpointError(
            f"could not read weights file {path}: {exc}. The file is truncated or corrupt "
            "(or not a weights-only checkpoint); download or export it again"
        ) from exc


def normalize_state_dict(checkpoint: Any, model: CoCa) -> dict[str, torch.Tensor]:
    """open_clip's conventions: unwrap "state_dict", strip DDP's "module." prefix, and give
    logit_scale/logit_bias the model's shape (0-d or (1,))."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not all(
        isinstance(v, torch.Tensor) for v in checkpoint.values()
    ):
        raise CheckpointError("the checkpoint is not a state dict of tensors")
    state = dict(checkpoint)
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    for name in ("logit_scale", "logit_bias"):
        target = getattr(model, name)
        value = state.get(name)
        if value is not None and target is not None and value.numel() == target.numel():
            state[name] = value.reshape(target.shape)
    if model.logit_bias is not None and "logit_bias" not in state and "logit_scale" in state:
        logger.warning("checkpoint has no logit_bias; using 0 as open_clip does")
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    return state


def check_keys(model: CoCa, state: dict[str, torch.Tensor], origin: str) -> None:
    """Raise CheckpointError naming missing, unexpected and mis-shaped keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != expected[k]
    )
    if not (missing or unexpected or misshaped):
        return
    parts = []
    for title, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("mis-shaped", misshaped),
    ):
        if items:
            more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
            parts.append(f"{title} keys ({len(items)}): {', '.join(items[:_MAX_LISTED])}{more}")
    raise CheckpointError(
        f"{origin} does not match the model config: "
        + "; ".join(parts)
        + ". Check that the config belongs to these weights"
    )


def _build(config: CocaConfig, state: dict[str, torch.Tensor], origin: str) -> CoCa:
    """Construct on the meta device (no wasted random init) and adopt the checked tensors."""
    with torch.device("meta"):
        model = CoCa(config)
    state = normalize_state_dict(state, model)
    check_keys(model, state, origin)
    model.load_state_dict(state, strict=True, assign=True)
    return model.float()


def _load_open_clip(folder: Path) -> CoCa:
    cfg = _read_json(folder / OPEN_CLIP_CONFIG)
    if "model_cfg" not in cfg:
        raise CheckpointError(f"{folder / OPEN_CLIP_CONFIG} has no 'model_cfg' entry")
    try:
        config = CocaConfig.from_open_clip(cfg["model_cfg"])
    except ValueError as exc:
        raise CheckpointError(f"{folder / OPEN_CLIP_CONFIG}: {exc}") from exc
    weights = next((folder / n for n in OPEN_CLIP_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{folder} has none of the weights files {OPEN_CLIP_WEIGHTS}")
    model = _build(config, read_state_dict(weights), str(weights))
    text_cfg = cfg["model_cfg"].get("text_cfg", {})
    if text_cfg.get("hf_tokenizer_name") or config.vocab_size != CLIP_VOCAB_SIZE:
        tokenizer = _tokenizer_from_file(folder / BUNDLE_TOKENIZER, config.text.context_length)
    else:
        tokenizer = Tokenizer.clip(context_length=config.text.context_length)
    _check_tokenizer(tokenizer, config, folder)
    model.tokenizer = tokenizer
    pp = cfg.get("preprocess_cfg") or {}
    model.preprocess = _make_preprocess(config.vision.image_size, pp, folder / OPEN_CLIP_CONFIG)
    return model


def _load_bundle(folder: Path) -> CoCa:
    meta = _read_json(folder / BUNDLE_CONFIG)
    if meta.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(
            f"{folder / BUNDLE_CONFIG} is not a {BUNDLE_FORMAT} config "
            f"(format={meta.get('format')!r})"
        )
    if meta.get("format_version", 0) > BUNDLE_FORMAT_VERSION:
        raise CheckpointError(f"{folder} was written by a newer coca-search; upgrade to load it")
    if not (folder / BUNDLE_TOKENIZER).is_file():
        raise CheckpointError(
            f"{folder} has no {BUNDLE_TOKENIZER}: a model bundle must carry its tokenizer; "
            "re-export it with coca.save_bundle"
        )
    try:
        config = CocaConfig.from_dict(meta["model"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(
            f"{folder / BUNDLE_CONFIG} has an invalid model config: {exc}"
        ) from exc
    weights = folder / BUNDLE_WEIGHTS
    model = _build(config, read_state_dict(weights), str(weights))
    context = meta.get("tokenizer", {}).get("context_length", config.text.context_length)
    model.tokenizer = _tokenizer_from_file(folder / BUNDLE_TOKENIZER, context)
    _check_tokenizer(model.tokenizer, config, folder)
    pp = meta.get("preprocess") or {}
    model.preprocess = _make_preprocess(config.vision.image_size, pp, folder / BUNDLE_CONFIG)
    return model


def save_bundle(model: CoCa, folder: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write config.json, model.safetensors (floating tensors cast to dtype) and tokenizer.json."""
    from safetensors.torch import save_file

    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer to save; set model.tokenizer first")
    _check_tokenizer(model.tokenizer, model.config, Path(folder))
    preprocess = model.preprocess or Preprocess(PreprocessConfig(model.config.vision.image_size))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    save_file(state, str(folder / BUNDLE_WEIGHTS), metadata={"format": "pt"})
    tok = model.tokenizer
    tok.save(folder / BUNDLE_TOKENIZER)
    meta = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "dtype": str(dtype).removeprefix("torch."),
        "model": model.config.to_dict(),
        "tokenizer": {
            "file": BUNDLE_TOKENIZER,
            "context_length": tok.context_length,
            "sot_token_id": tok.sot_token_id,
            "eot_token_id": tok.eot_token_id,
            "pad_token_id": tok.pad_token_id,
            "vocab_size": tok.vocab_size,
        },
        "preprocess": preprocess.config.to_dict(),
    }
    (folder / BUNDLE_CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    logger.info("saved model bundle to %s", folder)
    return folder


# --- tokenizer / preprocessing ------------------------------------------------------------------


def _tokenizer_from_file(path: Path, context_length: int) -> Tokenizer:
    if not path.is_file():
        raise CheckpointError(
            f"missing {path}: this model does not use CLIP's vocabulary, so it needs its tokenizer"
        )
    try:
        return Tokenizer.from_file(path, context_length=context_length)
    except ValueError as exc:
        raise CheckpointError(f"could not read tokenizer {path}: {exc}") from exc


def _check_tokenizer(tokenizer: Tokenizer, config: CocaConfig, origin: Path) -> None:
    """The tokenizer's special ids and vocabulary must be the ones the weights were trained with."""
    ours = (tokenizer.sot_token_id, tokenizer.eot_token_id, tokenizer.pad_token_id)
    theirs = (config.sot_token_id, config.eot_token_id, config.pad_token_id)
    if ours != theirs or tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"{origin}: tokenizer (sot, eot, pad)={ours}, vocab {tokenizer.vocab_size} does not "
            f"match the model's {theirs}, vocab {config.vocab_size}"
        )


def _make_preprocess(image_size: int, preprocess_cfg: dict[str, Any], origin: Path) -> Preprocess:
    """Preprocess from open_clip-style settings; the model decides the size, as open_clip does."""
    try:
        return Preprocess(PreprocessConfig.from_open_clip({**preprocess_cfg, "size": image_size}))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{origin}: invalid preprocessing settings: {exc}") from exc
