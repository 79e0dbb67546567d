"""An auxiliary training signal for the default model: the image latent must say where things are.

Why: trained with the contrastive and caption losses alone (plus mirrored twins and relation-swapped
hard negatives), the default model's image latent carried no linear trace of object positions (a
ridge probe from the v3 latent to each kind's x position scored R^2 <= 0.03 on held-out scenes),
so "a car left of a boat" retrieved cars and boats in either order (relational P@10 0.447), while
the caption decoder, reading the image tokens, stated 82 % of relations correctly. Image and text
towers sat at a saddle: a latent blind to geometry gives the text tower no reason to read the
relation words, and vice versa.

The probe is a linear head on the normalised image latent that regresses the mean centre (x, y)
of every (kind, color) group and every kind in the scene graph. Being linear, it can only succeed
when the latent itself encodes positions linearly, which is what a dot-product search needs. The
head lives only in training (and its checkpoints); the exported bundle is a plain CoCa.

Legend: B batch, L layout slots = 2 * (kinds * colors + kinds), E embed_dim.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from coca.world.scene import COLORS, KINDS, Scene

_GROUPS = [(kind, color) for kind in KINDS for color in COLORS] + [(kind, None) for kind in KINDS]
_SLOT = {group: 2 * i for i, group in enumerate(_GROUPS)}  # group -> index of its x; y follows
LAYOUT_SLOTS = 2 * len(_GROUPS)


def layout_target(scene: Scene) -> np.ndarray:
    """(L,) float32: mean centre x, y of each (kind, color) group and each kind present, NaN for
    absent ones. Centres are the scene's normalised coordinates (x right, y down)."""
    target = np.full(LAYOUT_SLOTS, np.nan, dtype=np.float32)
    for group in _GROUPS:
        kind, color = group
        members = [o for o in scene.objects if o.kind == kind and color in (None, o.color)]
        if members:
            slot = _SLOT[group]
            target[slot] = np.mean([o.x for o in members])
            target[slot + 1] = np.mean([o.y for o in members])
    return target


def mirror_layout(targets: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """targets (B, L) with x -> 1 - x in the rows where flip (B,) is set (NaN stays NaN)."""
    mirrored = targets.clone()
    mirrored[:, 0::2] = 1.0 - mirrored[:, 0::2]
    return torch.where(flip.view(-1, 1), mirrored, targets)


class LayoutProbe(nn.Module):
    """Linear map from the normalised image latent (B, E) to layout slots (B, L)."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.head = nn.Linear(embed_dim, LAYOUT_SLOTS)

    def loss(self, image_features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the present slots; centres are shifted to [-0.5, 0.5] so an
        untrained (zero-mean) head starts from the positions' variance."""
        present = ~torch.isnan(targets)  # (B, L)
        predicted = self.head(image_features.float())  # (B, L)
        error = (predicted - (targets.nan_to_num(0.5) - 0.5)) ** 2
        return (error * present).sum() / present.sum().clamp(min=1)
