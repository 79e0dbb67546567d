"""coca.load / coca.save_bundle: sources, attachments, strict keys and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import coca
from coca import checkpoint
from coca.checkpoint import CheckpointError
from coca.model import CoCa
from tests.conftest import make_texts, save_open_clip_folder


@pytest.fixture()
def tiny_state(tiny_reference: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    model, model_cfg = tiny_reference
    return dict(model.state_dict()), model_cfg


def test_load_open_clip_folder_attaches_tokenizer_preprocess_source(
    tiny_open_clip_folder: Path,
) -> None:
    model = coca.load(tiny_open_clip_folder)
    assert not model.training
    assert model.source == str(tiny_open_clip_folder.resolve())
    ids = model.tokenizer(["a photo of a dog", "x"])
    assert ids.shape == (2, 76) and ids.dtype == torch.long
    assert ids[0, 0] == model.config.sot_token_id
    pixels = model.preprocess(Image.new("RGB", (50, 40), (200, 10, 10)))
    assert pixels.shape == (3, 32, 32)
    assert model.encode_image(pixels[None]).shape == (1, 32)


def test_load_dtype_bfloat16_runs_forward(tiny_open_clip_folder: Path) -> None:
    fp32 = coca.load(tiny_open_clip_folder)
    bf16 = coca.load(tiny_open_clip_folder, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = fp32.encode_image(images)
        b = bf16.encode_image(images.to(torch.bfloat16))
    assert b.dtype == torch.bfloat16
    assert torch.allclose(a, b.float(), atol=5e-2)


def test_load_bundle_round_trip(tiny_open_clip_folder: Path, tmp_path: Path) -> None:
    model = coca.load(tiny_open_clip_folder)
    out = coca.save_bundle(model, tmp_path / "bundle", dtype=torch.float16)
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    meta = json.loads((out / "config.json").read_text())
    assert meta["tokenizer"]["pad_token_id"] == 0 and meta["tokenizer"]["context_length"] == 76
    assert meta["preprocess"]["size"] == 32
    loaded = coca.load(out)
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value.half().float()), key
    texts = ["a red square, on grass!", "two cats"]
    assert torch.equal(loaded.tokenizer(texts), model.tokenizer(texts))
    assert loaded.preprocess.config == model.preprocess.config


def test_load_bundle_without_tokenizer_raises(tiny_open_clip_folder: Path, tmp_path: Path) -> None:
    out = coca.save_bundle(coca.load(tiny_open_clip_folder), tmp_path / "bundle")
    (out / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        coca.load(out)


def test_load_missing_unexpected_and_misshaped_keys_are_named(
    tiny_state: Any, tmp_path: Path
) -> None:
    state, model_cfg = tiny_state
    del state["visual.ln_post.bias"]
    state["text.extra_weight"] = torch.zeros(3)
    state["text.cls_emb"] = torch.zeros(31)
    folder = save_open_clip_folder(state, model_cfg, tmp_path / "bad")
    with pytest.raises(CheckpointError) as info:
        coca.load(folder)
    message = str(info.value)
    assert "missing keys (1): visual.ln_post.bias" in message
    assert "unexpected keys (1): text.extra_weight" in message
    assert "text.cls_emb: checkpoint (31,) vs model (32,)" in message


@pytest.mark.parametrize("weights", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_load_truncated_weights_file_names_it(
    tiny_state: Any, tmp_path: Path, weights: str
) -> None:
    state, model_cfg = tiny_state
    folder = save_open_clip_folder(state, model_cfg, tmp_path / "cut", weights=weights)
    path = folder / weights
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=weights):
        coca.load(folder)


def test_load_bin_refuses_arbitrary_pickles(tiny_state: Any, tmp_path: Path) -> None:
    state, model_cfg = tiny_state
    folder = save_open_clip_folder(state, model_cfg, tmp_path / "pickle", weights="x.bin")
    torch.save(
        {"state_dict": state, "optimizer": Path("/")}, folder / "open_clip_pytorch_model.bin"
    )
    with pytest.raises(CheckpointError, match="open_clip_pytorch_model.bin"):
        coca.load(folder)


def test_load_corrupt_config_json_names_it(tiny_open_clip_folder: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_open_clip_folder, tmp_path / "copy"))
    (folder / "open_clip_config.json").write_text('{"model_cfg": {')
    with pytest.raises(CheckpointError, match="open_clip_config.json"):
        coca.load(folder)


def test_load_nonexistent_path_raises(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such model folder"):
        coca.load(str(tmp_path / "nope" / "deeper"))


def test_load_folder_without_weights_raises(tiny_state: Any, tmp_path: Path) -> None:
    _, model_cfg = tiny_state
    folder = save_open_clip_folder({}, model_cfg, tmp_path / "empty")
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="none of the weights files"):
        coca.load(folder)


def test_load_hub_id_offline_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CheckpointError, match="offline"):
        coca.load("laion/CoCa-ViT-B-32-laion2B-s13B-b90k")


def test_load_default_missing_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(checkpoint, "DEFAULT_MODEL_DIR", tmp_path / "default_model")
    with pytest.raises(CheckpointError, match="default model is not installed"):
        coca.load("default")


def test_load_state_dict_loads_into_plain_model(tiny_state: Any, tiny_config: Any) -> None:
    """The checkpoint's keys load with torch's own strict check too (no renaming anywhere)."""
    state, _ = tiny_state
    model = CoCa(tiny_config)
    model.load_state_dict(state, strict=True)
    texts = make_texts([4, 9], context=20)
    assert model.encode_text(texts).shape == (2, 32)


def test_model_caption_and_generate_delegate_to_coca_generate(tiny_open_clip_folder: Path) -> None:
    model = coca.load(tiny_open_clip_folder)
    images = [Image.new("RGB", (40, 30), (0, 120, 250)), Image.new("RGB", (30, 30), (9, 9, 9))]
    captions = model.caption(images, generation_type="greedy", seq_len=8)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    pixels = torch.stack([model.preprocess(image) for image in images])
    ids = model.generate(pixels, generation_type="greedy", seq_len=8)
    assert ids.shape[0] == 2 and ids.shape[1] <= 8 and (ids[:, 0] == 49406).all()
    assert captions == [model.tokenizer.decode(row).strip() for row in _strip(ids)]
    with pytest.raises(ValueError, match="no images"):
        model.caption([])


def _strip(ids: torch.Tensor) -> list[list[int]]:
    """Generated rows without <start_of_text>, cut at <end_of_text>."""
    rows = []
    for row in ids.tolist():
        row = row[1:]
        rows.append(row[: row.index(49407)] if 49407 in row else row)
    return rows
