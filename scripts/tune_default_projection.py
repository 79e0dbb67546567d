"""Locked-image, locked-tower tuning of the default model's text projection (CPU, minutes).

    python scripts/tune_default_projection.py OUT_BUNDLE [--scenes 6000] [--steps 1500] [--seed 0]

Why: the default model's text tower was trained on whole captions only, so short search queries
("a red car", "a car above a house") rank images by how completely they describe them. Here the
image tower, the text transformer and the caption decoder stay frozen; only the text tower's
final LayerNorm and projection (applied to the cls output alone) are re-fitted with a contrastive
loss on short true statements ("partial captions", checked against each scene graph) mixed with
whole captions. The decoder reads the per-token outputs *before* that LayerNorm, so captions are
bit-identical. Scenes come from a sub-split seeded from the training seed
(`item_seed(TRAIN_SEED, 1_000_000)`); the evaluation split is never touched.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import coca
from coca.data import GeneratedDataConfig, render_scenes
from coca.partial_captions import partial_captions
from coca.world import TRAIN_SEED, item_seed, scene_for_seed

logger = logging.getLogger("tune_default_projection")
TUNING_SPLIT = item_seed(TRAIN_SEED, 1_000_000)  # a sub-split of the training seed stream


def cls_states(model: coca.CoCa, texts: list[str], batch: int = 512) -> torch.Tensor:
    """(N, D) cls outputs of the frozen text transformer, i.e. the input of ln_final."""
    captured: list[torch.Tensor] = []
    hook = model.text.ln_final.register_forward_hook(lambda _m, args, _o: captured.append(args[0]))
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch):
                model.encode_text(model.tokenizer(texts[start : start + batch]))
    finally:
        hook.remove()
    return torch.cat(captured)


def image_latents(model: coca.CoCa, count: int) -> torch.Tensor:
    config = GeneratedDataConfig(
        pool_size=count, width=640, height=480, captions_per_image=1, split_seed=TUNING_SPLIT
    )
    rendered = render_scenes(config, model.preprocess)
    pixels = torch.from_numpy(rendered.images).permute(0, 3, 1, 2)  # (N, 3, S, S) uint8
    out = []
    with torch.no_grad():
        for start in range(0, count, 256):
            out.append(model.encode_image(model.preprocess.batch(pixels[start : start + 256])))
    return torch.cat(out)


def texts_for(count: int, per_scene: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        scene = scene_for_seed(item_seed(TUNING_SPLIT, index))
        out.append(partial_captions(scene, rng, per_scene))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--scenes", type=int, default=6000)
    parser.add_argument("--partials", type=int, default=6)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    model = coca.load("default")
    images = image_latents(model, args.scenes)  # (N, E) normalized, frozen
    logger.info("image latents %s in %.0f s", tuple(images.shape), time.perf_counter() - started)
    texts = texts_for(args.scenes, args.partials, args.seed)
    states = cls_states(model, [t for group in texts for t in group])
    states = states.view(args.scenes, args.partials, -1)  # (N, K, D)
    logger.info("text states %s in %.0f s", tuple(states.shape), time.perf_counter() - started)

    ln, proj = model.text.ln_final, model.text.text_projection
    params = [ln.weight, ln.bias, proj]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    scale = model.logit_scale.exp().detach()
    optim = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        rows = torch.randperm(args.scenes, generator=generator)[: args.batch_size]  # (B,)
        pick = torch.randint(args.partials, (len(rows),), generator=generator)
        text = F.normalize(ln(states[rows, pick]) @ proj, dim=-1)  # (B, E)
        logits = scale * text @ images[rows].T  # (B, B)
        target = torch.arange(len(rows))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        optim.zero_grad()
        loss.backward()
        optim.step()
        if step % 250 == 0 or step == args.steps - 1:
            logger.info("step %d loss %.4f", step, loss.item())
    for p in params:
        p.requires_grad_(False)
    coca.save_bundle(model, args.out)
    logger.info("saved %s after %.0f s", args.out, time.perf_counter() - started)


if __name__ == "__main__":
    main()
