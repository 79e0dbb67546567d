"""The optimizer and its schedule: AdamW with decay on weight matrices only, linear warmup, then
a cosine that can follow the wall clock of a time budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from coca.model import CoCa


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup then cosine decay, as open_clip trains CoCa."""

    lr: float = 1e-3  # peak learning rate, reached after warmup
    weight_decay: float = 0.05  # on matrices only; norms, biases, embeddings, temperature: none
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 200
    min_lr_ratio: float = 0.01  # the cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    contrastive_weight: float = 1.0
    caption_weight: float = 2.0


def make_optimizer(
    model: CoCa, optim: OptimConfig, device: torch.device, probes: tuple[nn.Module, ...] = ()
) -> torch.optim.AdamW:
    """AdamW; weight decay only on weight matrices (open_clip excludes norms, biases, gains).
    Training-only probe heads are not decayed: they must grow large to read a unit-norm latent."""
    decay, no_decay = [], [p for probe in probes for p in probe.parameters()]
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_matrix = param.ndim >= 2 and "embedding" not in name and "query" not in name
        (decay if is_matrix else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = device.type == "cuda"  # one kernel per step instead of one per tensor
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, fused=fused)


def learning_rate(step: int, total_steps: int, optim: OptimConfig, time_fraction: float) -> float:
    """Linear warmup over warmup_steps, then cosine to lr*min_lr_ratio at the end of the schedule.

    `time_fraction` (elapsed / time budget, 0 without one) moves the cosine along when the wall
    clock runs out faster than the steps do.
    """
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    span = max(1, total_steps - optim.warmup_steps)
    progress = min(1.0, max((step - optim.warmup_steps) / span, time_fraction))
    floor = optim.lr * optim.min_lr_ratio
    return floor + (optim.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
