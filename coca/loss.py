"""The CoCa training objective: contrastive (image <-> text) plus captioning cross-entropy.

Legend: B batch, T caption positions, V vocabulary, E embed_dim, M hard negative texts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from coca.model import CocaOutput


@dataclass(frozen=True)
class TextNegatives:
    """Extra false texts for the image->text side of the contrastive loss (NegCLIP)."""

    features: torch.Tensor  # (M, E) normalised text features
    allowed: torch.Tensor  # (B, M) bool: image b is scored against negative m


@dataclass(frozen=True)
class CocaLossOutput:
    total: torch.Tensor  # weighted sum, what to backpropagate
    contrastive: torch.Tensor  # already multiplied by its weight (as open_clip reports it)
    caption: torch.Tensor  # already multiplied by its weight
    # Auxiliary terms added by the trainer, already weighted and inside `total` (the layout probe
    # of coca.layout_probe); None when the run has none.
    layout: torch.Tensor | None = None


class CocaLoss(nn.Module):
    """open_clip's CoCaLoss on a single device: `contrastive_weight` x symmetric cross-entropy of
    logit_scale * img @ txt^T (+ logit_bias when the model has one) plus `caption_weight` x token
    cross-entropy that ignores padding. Defaults are open_clip's training defaults (1.0, 2.0)."""

    def __init__(
        self, contrastive_weight: float = 1.0, caption_weight: float = 2.0, pad_id: int = 0
    ) -> None:
        super().__init__()
        self.contrastive_weight = contrastive_weight
        self.caption_weight = caption_weight
        self.pad_id = pad_id

    def contrastive(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
        negatives: TextNegatives | None = None,
    ) -> torch.Tensor:
        """Mean of image->text and text->image cross-entropy; the matching pair is the diagonal.

        With `negatives`, each image also competes against the batch's hard negative texts
        (columns it may not see are -inf); text->image stays the plain (B, B) softmax, since a
        negative text has no image of its own.
        """
        logits = logit_scale * image_features @ text_features.T  # (B, B)
        if logit_bias is not None:
            logits = logits + logit_bias
        targets = torch.arange(logits.shape[0], device=logits.device)
        image_logits = logits
        if negatives is not None:
            extra = logit_scale * image_features @ negatives.features.T  # (B, M)
            if logit_bias is not None:
                extra = extra + logit_bias
            extra = extra.masked_fill(~negatives.allowed, float("-inf"))
            image_logits = torch.cat([logits, extra], dim=1)  # (B, B+M)
        return (F.cross_entropy(image_logits, targets) + F.cross_entropy(logits.T, targets)) / 2

    def caption(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """logits (B, T, V), labels (B, T); pad labels do not count."""
        return F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=self.pad_id)

    def forward(self, output: CocaOutput, negatives: TextNegatives | None = None) -> CocaLossOutput:
        """The weighted losses; `negatives` only enter the contrastive term, never the caption."""
        if self.contrastive_weight:
            contrastive = self.contrastive_weight * self.contrastive(
                output.image_features,
                output.text_features,
                output.logit_scale,
                output.logit_bias,
                negatives,
            )
        else:
            contrastive = output.logits.new_zeros(())
        caption = self.caption_weight * self.caption(output.logits, output.labels)
        return CocaLossOutput(total=contrastive + caption, contrastive=contrastive, caption=caption)
