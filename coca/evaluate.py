"""Evaluate a CoCa model on held-out procedural scenes: retrieval both ways and caption quality.

The held-out split (`coca.world.HELDOUT_SEED` by default) is never used for training. Images are
rendered at the library's photo size (640x480) so the model sees what the indexer will feed it.

- text->image precision@10 per query category (attribute, relational, count): a retrieved image is
  relevant when its scene graph satisfies the query (`Query.matches`);
- image->text recall@1: each image ranks the distinct reference captions of the whole set; a hit
  when the best one is among its own references (identical sentences of other images count too);
- caption attribute precision/recall/F1 (captions parsed back with the grammar), BLEU-4, CIDEr-D.

Legend: N images, Q queries, M distinct reference captions, E embed_dim.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from coca.data import GeneratedDataConfig, render_scenes
from coca.generate import DecodingConfig, caption_texts
from coca.metrics import (
    AttributeScores,
    bleu4,
    caption_attribute_scores,
    cider_d,
    precision_at_k,
    ranked_relevance,
    recall_at_1,
)
from coca.world.queries import CATEGORIES, HELDOUT_SEED, eval_queries, parse_query
from coca.world.scene import Scene, scenes

logger = logging.getLogger(__name__)

TARGETS = {"attribute": 0.95, "relational": 0.85, "count": 0.85, "caption_f1": 0.95}


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate on and how to caption."""

    count: int = 2000  # held-out images
    seed: int = HELDOUT_SEED  # split seed; must differ from every training split
    width: int = 640  # render size: the sample library's photo size
    height: int = 480
    queries_per_category: int = 30
    min_matches: int = 10  # a query is kept only if this many images match it (P@10 can reach 1)
    references_per_image: int = 5
    batch_size: int = 64
    decoding: DecodingConfig = field(
        default_factory=lambda: DecodingConfig(generation_type="greedy")
    )
    workers: int = 0  # render processes; 0 = one per CPU core
    k: int = 10  # precision@k


@dataclass(frozen=True)
class CategoryScore:
    category: str
    queries: int
    precision: float  # mean precision@k over the category's queries


@dataclass(frozen=True)
class EvalReport:
    images: int
    seed: int
    k: int
    text_to_image: tuple[CategoryScore, ...]
    image_to_text_recall_at_1: float
    caption: AttributeScores
    bleu4: float
    cider: float
    seconds: float
    examples: tuple[tuple[str, str], ...]  # (generated caption, first reference) of a few images

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def targets_met(self) -> dict[str, bool]:
        """issue 3's targets: P@10 per category and caption attribute F1."""
        met = {s.category: s.precision >= TARGETS[s.category] for s in self.text_to_image}
        met["caption_f1"] = self.caption.f1 >= TARGETS["caption_f1"]
        return met


@dataclass(frozen=True)
class HeldOutSet:
    """Rendered held-out scenes with their reference captions."""

    scenes: list[Scene]
    images: torch.Tensor  # (N, 3, S, S) uint8, already resized for the model
    references: list[list[str]]


def held_out_set(config: EvalConfig, preprocess: Any) -> HeldOutSet:
    """Render the split at the library's size, then resize as the indexer does (S x S)."""
    data = GeneratedDataConfig(
        pool_size=config.count,
        width=config.width,
        height=config.height,
        captions_per_image=config.references_per_image,
        split_seed=config.seed,
        workers=config.workers,
    )
    rendered = render_scenes(data, preprocess)
    images = torch.from_numpy(rendered.images).permute(0, 3, 1, 2)  # (N, 3, S, S)
    return HeldOutSet(scenes(config.seed, config.count), images, rendered.captions)


# --- metrics over embeddings (pure: tests feed hand-made vectors) --------------------------------


def text_to_image_precision(
    query_features: np.ndarray, image_features: np.ndarray, relevant: np.ndarray, k: int
) -> float:
    """Mean precision@k of queries (Q, E) ranking images (N, E); relevant (Q, N) bool."""
    scores = query_features @ image_features.T  # (Q, N)
    return precision_at_k(ranked_relevance(scores, relevant, k), k).value


def distinct_references(references: list[list[str]]) -> tuple[list[str], np.ndarray]:
    """The distinct reference sentences (M) and which belong to each image, (N, M) bool."""
    texts = sorted({text for refs in references for text in refs})
    column = {text: j for j, text in enumerate(texts)}
    owns = np.zeros((len(references), len(texts)), dtype=bool)
    for i, refs in enumerate(references):
        owns[i, [column[text] for text in refs]] = True
    return texts, owns


def image_to_text_recall(
    image_features: np.ndarray, text_features: np.ndarray, owns: np.ndarray
) -> float:
    """R@1 of images (N, E) ranking texts (M, E); owns (N, M) marks each image's references."""
    scores = image_features @ text_features.T  # (N, M)
    return recall_at_1(ranked_relevance(scores, owns, 1)).value


def query_relevance(queries: list[str], held_out: list[Scene]) -> np.ndarray:
    """(Q, N) bool: does scene n satisfy query q."""
    parsed = [parse_query(text) for text in queries]
    return np.array([[q.matches(scene) for scene in held_out] for q in parsed], dtype=bool)


# --- running a model -----------------------------------------------------------------------------


@torch.no_grad()
def encode_and_caption(
    model: Any, images: torch.Tensor, config: EvalConfig
) -> tuple[np.ndarray, list[str]]:
    """Image latents (N, E) and generated captions, one vision pass per image."""
    latents, captions = [], []
    for start in range(0, images.shape[0], config.batch_size):
        chunk = images[start : start + config.batch_size].to(model.device)
        pixels = model.preprocess.batch(chunk).to(model.dtype)  # (B, 3, S, S) normalised
        encoding = model.encode_image_with_tokens(pixels)
        ids = model.generate_from_tokens(encoding.tokens, config.decoding)  # (B, T)
        latents.append(encoding.latent.float().cpu())
        captions.extend(caption_texts(model, ids))
    return torch.cat(latents).numpy(), captions


@torch.no_grad()
def encode_texts(model: Any, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """Text latents (len(texts), E), normalised."""
    parts = []
    for start in range(0, len(texts), batch_size):
        tokens = model.tokenizer(texts[start : start + batch_size]).to(model.device)
        parts.append(model.encode_text(tokens).float().cpu())
    return torch.cat(parts).numpy()


def evaluate(model: Any, config: EvalConfig) -> EvalReport:
    """Render the held-out set, run the model on it, and score every metric."""
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    held_out = held_out_set(config, model.preprocess)
    image_features, captions = encode_and_caption(model, held_out.images, config)
    queries = eval_queries(
        config.seed,
        config.queries_per_category,
        n_images=config.count,
        min_matches=config.min_matches,
    )
    per_category = []
    for category in CATEGORIES:
        texts = queries[category]
        if not texts:
            logger.warning("no %s query matches %d held-out images", category, config.min_matches)
            continue
        relevant = query_relevance(texts, held_out.scenes)
        precision = text_to_image_precision(
            encode_texts(model, texts), image_features, relevant, config.k
        )
        per_category.append(CategoryScore(category, len(texts), precision))
    reference_texts, owns = distinct_references(held_out.references)
    recall = image_to_text_recall(image_features, encode_texts(model, reference_texts), owns)
    model.train(was_training)
    return EvalReport(
        images=config.count,
        seed=config.seed,
        k=config.k,
        text_to_image=tuple(per_category),
        image_to_text_recall_at_1=recall,
        caption=caption_attribute_scores(captions, held_out.scenes),
        bleu4=bleu4(captions, held_out.references).bleu,
        cider=cider_d(captions, held_out.references).score,
        seconds=time.perf_counter() - started,
        examples=tuple(
            (captions[i], held_out.references[i][0]) for i in range(min(5, config.count))
        ),
    )


def format_report(report: EvalReport) -> str:
    """A plain-text table (what `coca-search eval` prints)."""
    met = report.targets_met()
    rows = [("metric", "value", "target")]
    for score in report.text_to_image:
        target = f">= {TARGETS[score.category]:.2f} {'ok' if met[score.category] else 'MISSED'}"
        rows.append(
            (
                f"text->image P@{report.k} {score.category} ({score.queries} queries)",
                f"{score.precision:.3f}",
                target,
            )
        )
    rows.append(("image->text R@1", f"{report.image_to_text_recall_at_1:.3f}", ""))
    c = report.caption
    f1_target = f">= {TARGETS['caption_f1']:.2f} {'ok' if met['caption_f1'] else 'MISSED'}"
    rows.append(("caption attribute precision", f"{c.precision:.3f}", ""))
    rows.append(("caption attribute recall", f"{c.recall:.3f}", ""))
    rows.append(("caption attribute F1", f"{c.f1:.3f}", f1_target))
    rows.append(("captions parsed by the grammar", f"{c.parsed_fraction:.3f}", ""))
    rows.append(("BLEU-4", f"{report.bleu4:.3f}", ""))
    rows.append(("CIDEr-D", f"{report.cider:.3f}", ""))
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {value:>7}  {target}".rstrip() for name, value, target in rows]
    lines.insert(1, "-" * len(lines[0]))
    header = f"held-out split seed {report.seed}, {report.images} images, {report.seconds:.1f} s"
    return "\n".join([header, *lines])
