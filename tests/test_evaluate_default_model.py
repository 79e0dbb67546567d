"""The embedded default model: loads offline and captions generated scenes correctly."""

from __future__ import annotations

import pytest

from coca.checkpoint import BUNDLE_CONFIG, DEFAULT_MODEL_DIR

pytestmark = pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / BUNDLE_CONFIG).is_file(),
    reason=f"no trained default model in {DEFAULT_MODEL_DIR} yet (bash scripts/train_default.sh)",
)


def test_default_model_loads_offline_and_names_objects_and_colors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import coca
    from coca.metrics import caption_attribute_scores
    from coca.world import HELDOUT_SEED, parse_caption, render_scene, scenes

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = coca.load("default")
    assert model.source == "default"
    held_out = scenes(HELDOUT_SEED, 12)
    photos = [render_scene(scene, 640, 480) for scene in held_out]
    captions = model.caption(photos, generation_type="greedy")
    wrong = []
    for scene, caption in zip(held_out, captions, strict=True):
        said = parse_caption(caption)
        assert said is not None, f"caption outside the grammar: {caption!r}"
        truth = {(o.color, o.kind) for o in scene.objects}
        named = {(t.color, t.kind) for t in said.objects}
        if named != truth or said.background != scene.background:
            wrong.append(f"{caption!r} for {sorted(truth)} on {scene.background}")
    assert len(wrong) <= 2, wrong  # the model card's F1 is >= 0.95; allow a rare slip
    assert caption_attribute_scores(captions, held_out).f1 >= 0.9


def test_default_model_finds_a_scene_by_text() -> None:
    import torch

    import coca
    from coca.world import HELDOUT_SEED, parse_query, render_scene, scenes

    model = coca.load("default")
    held_out = scenes(HELDOUT_SEED + 1, 40)
    pixels = torch.stack([model.preprocess(render_scene(s, 640, 480)) for s in held_out])
    with torch.no_grad():
        images = model.encode_image(pixels)
        target = held_out[0].objects[0]
        query = f"a {target.color} {target.kind}"
        text = model.encode_text(model.tokenizer([query]))
    best = int((text @ images.T).argmax())
    assert parse_query(query).matches(held_out[best]), query
