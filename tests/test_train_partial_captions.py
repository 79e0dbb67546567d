"""coca.partial_captions: short contrastive texts that are true of their scene."""

from __future__ import annotations

import numpy as np
import torch

from coca.data import GeneratedBatches, GeneratedDataConfig, render_scenes
from coca.partial_captions import is_true_of, partial_captions
from coca.recipe import world_preprocess, world_tokenizer
from coca.world import parse_query, scenes

CPU = torch.device("cpu")


def test_partial_captions_are_true_short_and_varied() -> None:
    rng = np.random.default_rng(0)
    texts = [(scene, partial_captions(scene, rng, 4)) for scene in scenes(11, 200)]
    for scene, four in texts:
        assert len(four) == 4
        for text in four:
            assert parse_query(text).matches(scene), (text, scene)
    flat = [t for _, four in texts for t in four]
    assert any(" left of " in t or " above " in t or " below " in t for t in flat)
    assert any(t.startswith(("two ", "three ")) for t in flat)
    assert any(t.split()[1] in ("car", "boat", "tree", "house") for t in flat)  # a colorless one
    assert len(set(flat)) > 300


def test_is_true_of_rejects_false_statements() -> None:
    scene = scenes(11, 1)[0]
    absent = next(c for c in ("red", "blue", "green") if all(o.color != c for o in scene.objects))
    assert not is_true_of(f"a {absent} {scene.objects[0].kind}", scene)
    assert not is_true_of("not a caption at all", scene)


def test_generated_batches_draw_partial_texts_for_the_contrastive_side() -> None:
    config = GeneratedDataConfig(
        pool_size=8, width=40, height=30, workers=1, partial_captions_per_image=3, mirror=True
    )
    tokenizer = world_tokenizer()
    rendered = render_scenes(config, world_preprocess(32), tokenizer)
    assert all(len(texts) == 4 + 3 for texts in rendered.captions)
    source = GeneratedBatches(
        config, tokenizer, world_preprocess(32), 64, seed=0, device=torch.device("cpu")
    )
    batch = source.batch(0)
    assert batch.contrastive_tokens is not None and batch.contrastive_tokens.shape == (64, 32)
    captions = [tokenizer.decode(row) for row in batch.tokens]
    contrastive = [tokenizer.decode(row) for row in batch.contrastive_tokens]
    same = sum(a == b for a, b in zip(captions, contrastive, strict=True))
    assert 10 < same < 54  # about half of the contrastive texts are partial ones
    full_texts = {t for texts in rendered.captions for t in texts[:4]}
    for text in captions:  # whole captions only (maybe mirrored: left and right swapped)
        mirrored = text.replace("left", "#").replace("right", "left").replace("#", "right")
        assert text in full_texts or mirrored in full_texts
    assert torch.equal(batch.tokens, source.batch(0).tokens)


def test_generated_batches_mirror_twins_pair_a_scene_with_its_mirror_image() -> None:
    config = GeneratedDataConfig(
        pool_size=8, width=40, height=30, workers=1, mirror=True, mirror_twins=0.25,
        partial_captions_per_image=2,
    )  # fmt: skip
    tokenizer = world_tokenizer()
    source = GeneratedBatches(config, tokenizer, world_preprocess(32), 16, seed=3, device=CPU)
    batch = source.batch(0)
    head, tail = slice(0, 4), slice(12, 16)
    torch.testing.assert_close(batch.images[head].flip(-1), batch.images[tail])
    left, right = (tokenizer.encode(w)[0] for w in ("left", "right"))
    for tokens in (batch.tokens, batch.contrastive_tokens):  # twins' texts: left/right swapped
        swapped = torch.where(tokens == left, right, torch.where(tokens == right, left, tokens))
        assert torch.equal(swapped[head], tokens[tail])
