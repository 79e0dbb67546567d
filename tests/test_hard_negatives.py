"""coca.hard_negatives: false edits of true texts, their batches, and the loss that uses them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from coca.data import GeneratedBatches, GeneratedDataConfig, render_scenes, scene_captions
from coca.hard_negatives import candidate_negatives, hard_negative, is_false_of
from coca.loss import CocaLoss, TextNegatives
from coca.model import CocaOutput
from coca.optim import OptimConfig
from coca.partial_captions import is_true_of, partial_captions
from coca.recipe import world_preprocess, world_tokenizer
from coca.train import TrainConfig, train
from coca.train_state import read_log
from coca.world import item_seed, parse_description, scene_for_seed, scenes
from coca.world.scene import Scene, SceneObject

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mirrored(scene: Scene) -> Scene:
    """The scene graph of the mirrored picture."""
    objects = tuple(dataclasses.replace(obj, x=1 - obj.x) for obj in scene.objects)
    return dataclasses.replace(scene, objects=objects)


def swap_sides(text: str) -> str:
    return text.replace("left", "#").replace("right", "left").replace("#", "right")


def test_hard_negatives_are_false_while_their_positives_are_true() -> None:
    rng = np.random.default_rng(0)
    kinds = {"relation": 0, "arguments": 0, "colors": 0}
    made = 0
    for index, scene in enumerate(scenes(21, 300)):
        texts = scene_captions(21, index, 4, scene) + partial_captions(scene, rng, 4)
        for text in texts:
            assert is_true_of(text, scene), text
            negative = hard_negative(text, scene, rng)
            if negative is None:
                continue
            made += 1
            assert parse_description(negative) is not None, negative
            assert is_false_of(negative, scene) and not is_true_of(negative, scene)
            assert is_false_of(swap_sides(negative), mirrored(scene))  # what mirroring feeds
            kinds[_edit_kind(text, negative)] += 1
    assert made > 600  # about a third of the texts have a relation or two colors to swap
    assert all(count > 30 for count in kinds.values()), kinds


def _edit_kind(text: str, negative: str) -> str:
    relation_words = {"left", "right", "above", "below", "over", "under", "beneath"}
    ignored = {"a", "an", "is", "are", "red", "orange", "yellow", "green", "blue", "purple"}
    ignored |= {"white", "black"}

    def words(said: str, keep: set[str] | None, drop: set[str]) -> list[str]:
        return [w for w in said.split() if (keep is None or w in keep) and w not in drop]

    if words(text, relation_words, set()) != words(negative, relation_words, set()):
        return "relation"
    return "colors" if words(text, None, ignored) == words(negative, None, ignored) else "arguments"


def test_candidate_negatives_edit_relation_arguments_and_colors() -> None:
    text = "there is a red car to the left of two orange boats under the night sky"
    assert candidate_negatives(text) == [
        "there is a red car to the right of two orange boats under the night sky",
        "there are two orange boats to the left of a red car under the night sky",
        "there is an orange car to the left of two red boats under the night sky",
    ]
    assert candidate_negatives("a red car on the beach") == []
    assert candidate_negatives("not a caption") == []


def test_hard_negative_skips_edits_that_stay_true() -> None:
    square = SceneObject(kind="square", color="red", size="small", x=0.2, y=0.5)
    circle = SceneObject(kind="circle", color="blue", size="small", x=0.5, y=0.5)
    scene = Scene(background="grass", objects=(square, circle, dataclasses.replace(square, x=0.8)))
    rng = np.random.default_rng(0)
    # "right of" and "a square left of a circle" are just as true: squares on both sides.
    assert hard_negative("a circle left of a square", scene, rng) is None
    assert hard_negative("a blue circle left of a red square", scene, rng) is not None  # colors


def test_rendered_pool_keeps_one_checked_negative_per_text() -> None:
    config = GeneratedDataConfig(
        pool_size=12, width=40, height=30, workers=1, partial_captions_per_image=3,
        hard_negatives=0.5,
    )  # fmt: skip
    tokenizer = world_tokenizer()
    rendered = render_scenes(config, world_preprocess(32), tokenizer)
    assert rendered.negatives is not None and rendered.negative_tokens is not None
    assert rendered.negative_tokens.shape == rendered.tokens.shape
    found = 0
    for index, (texts, negatives) in enumerate(
        zip(rendered.captions, rendered.negatives, strict=True)
    ):
        scene = scene_for_seed(item_seed(config.split_seed, index))
        for k, (text, negative) in enumerate(zip(texts, negatives, strict=True)):
            ids = rendered.negative_tokens[index, k]
            if negative is None:  # the text's own ids, never used
                np.testing.assert_array_equal(ids, rendered.tokens[index, k])
                continue
            found += 1
            assert is_false_of(negative, scene) and is_true_of(text, scene)
            assert tokenizer.decode(torch.from_numpy(ids).long()) == negative
    assert found > 5
    plain = render_scenes(dataclasses.replace(config, hard_negatives=0.0))
    assert plain.negatives is None and plain.captions == rendered.captions


def test_generated_batches_pair_negatives_with_their_rows_and_mask_mirror_twins() -> None:
    config = GeneratedDataConfig(
        pool_size=16, width=40, height=30, workers=1, partial_captions_per_image=3,
        mirror=True, mirror_twins=0.25, hard_negatives=0.5,
    )  # fmt: skip
    tokenizer, preprocess = world_tokenizer(), world_preprocess(32)
    source = GeneratedBatches(config, tokenizer, preprocess, 32, seed=4, device=CPU)
    rendered = render_scenes(config, preprocess, tokenizer)
    batch = source.batch(0)
    assert batch.negative_tokens is not None and batch.negative_allowed is not None
    assert batch.negative_tokens.shape == (16, 32) and batch.negative_allowed.shape == (32, 16)
    pictures = source.normalize(source.images)  # (N, 3, S, S)
    seen = [_identify(image, pictures) for image in batch.images]  # (pool index, mirrored)
    lenders: dict[str, set[tuple[int, bool]]] = {}  # negative text as fed -> whose it is
    for b, (index, flipped) in enumerate(seen):
        text = tokenizer.decode(batch.contrastive_tokens[b])
        k = [swap_sides(t) if flipped else t for t in rendered.captions[index]].index(text)
        negative = rendered.negatives[index][k]
        if negative is not None:
            fed = swap_sides(negative) if flipped else negative
            lenders.setdefault(fed, set()).add((index, flipped))
    used = 0
    for m in range(16):
        if not batch.negative_allowed[:, m].any():
            continue
        negative = tokenizer.decode(batch.negative_tokens[m])
        for index, flipped in lenders[negative]:  # some row's own negative
            graph = rendered_scene(config, index)
            assert is_false_of(negative, mirrored(graph) if flipped else graph)
        masked = [  # its scene the other way round never sees it
            all(
                not batch.negative_allowed[b, m]
                for b, seen_as in enumerate(seen)
                if seen_as == other
            )
            for other in ((index, not flipped) for index, flipped in lenders[negative])
        ]
        assert any(masked)
        used += 1
    assert used > 8
    assert all(seen[24 + i] == (seen[i][0], not seen[i][1]) for i in range(8))  # twins


def rendered_scene(config: GeneratedDataConfig, index: int) -> Scene:
    return scene_for_seed(item_seed(config.split_seed, index))


def _identify(image: torch.Tensor, pictures: torch.Tensor) -> tuple[int, bool]:
    for index, picture in enumerate(pictures):
        for flipped in (False, True):
            if torch.equal(image, picture.flip(-1) if flipped else picture):
                return index, flipped
    raise AssertionError("a batch image that is not in the pool")


def fake_output(image: list[list[float]], text: list[list[float]], scale: float) -> CocaOutput:
    return CocaOutput(
        image_features=torch.tensor(image),
        text_features=torch.tensor(text),
        logits=torch.zeros(2, 1, 3),
        labels=torch.ones(2, 1, dtype=torch.long),
        logit_scale=torch.tensor(scale),
        logit_bias=None,
    )


def test_contrastive_loss_with_negatives_matches_a_hand_computation() -> None:
    output = fake_output([[1.0, 0.0], [0.0, 1.0]], [[0.8, 0.6], [0.6, 0.8]], scale=2.0)
    negatives = TextNegatives(torch.tensor([[1.0, 0.0]]), torch.tensor([[True], [False]]))
    loss = CocaLoss(contrastive_weight=1.0, caption_weight=0.0)
    got = loss(output, negatives).contrastive

    def ce(logits: list[float], target: int) -> float:
        return -logits[target] + math.log(sum(math.exp(x) for x in logits))

    image_0 = ce([1.6, 1.2, 2.0], 0)  # its text, the other text, the negative
    image_1 = ce([1.2, 1.6], 1)  # the negative is masked for image 1
    text_0, text_1 = ce([1.6, 1.2], 0), ce([1.2, 1.6], 1)  # text->image: no negatives
    expected = ((image_0 + image_1) / 2 + (text_0 + text_1) / 2) / 2
    assert got.item() == pytest.approx(expected, rel=1e-6)
    plain = loss(output).contrastive
    assert got.item() > plain.item()
    none_allowed = TextNegatives(negatives.features, torch.zeros(2, 1, dtype=torch.bool))
    assert loss(output, none_allowed).contrastive.item() == pytest.approx(plain.item())
    pushed_away = TextNegatives(torch.tensor([[-1.0, 0.0]]), negatives.allowed)
    assert loss(output, pushed_away).contrastive.item() < got.item()
    assert loss(output, negatives).caption.item() == loss(output).caption.item() == 0.0


def test_generated_data_config_rejects_a_bad_hard_negative_share() -> None:
    with pytest.raises(ValueError, match="hard_negatives"):
        GeneratedDataConfig(hard_negatives=1.5)


def test_train_tiny_run_with_hard_negatives_lowers_loss(tmp_path: Path) -> None:
    data = GeneratedDataConfig(
        pool_size=24, width=40, height=30, captions_per_image=2, workers=1, mirror=True,
        mirror_twins=0.25, partial_captions_per_image=2, hard_negatives=0.5,
    )  # fmt: skip
    config = TrainConfig(
        output=tmp_path / "bundle",
        model="coca_tiny",
        data=data,
        steps=30,
        batch_size=8,
        optim=OptimConfig(lr=3e-3, warmup_steps=3),
        device="cpu",
        checkpoint_every=100,
        log_every=1,
    )
    result = train(config)
    losses = [record["loss"] for record in read_log(result.run_dir)]
    assert result.finished and len(losses) == 30 and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 1.0, f"loss did not fall: {first:.3f} -> {last:.3f}"


def test_rendered_pool_negatives_are_the_same_from_parallel_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import coca.scene_pool

    config = GeneratedDataConfig(
        pool_size=12, width=40, height=30, workers=1, partial_captions_per_image=2,
        hard_negatives=0.5,
    )  # fmt: skip
    tokenizer, preprocess = world_tokenizer(), world_preprocess(32)
    serial = render_scenes(config, preprocess, tokenizer)
    monkeypatch.setattr(coca.scene_pool, "_RENDER_CHUNK", 3)  # 4 chunks over 2 workers
    parallel = render_scenes(dataclasses.replace(config, workers=2), preprocess, tokenizer)
    assert serial.negatives == parallel.negatives
    np.testing.assert_array_equal(serial.negative_tokens, parallel.negative_tokens)
