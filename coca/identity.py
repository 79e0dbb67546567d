"""A model's identity for the catalog: which weights produced an embedding or a caption.

Embeddings from two different models must never be compared, so every catalog row names the
model that made it. The identity hashes the config and a sample of every weight tensor: a
retrained model with the same config is a different model, while the same weights loaded in fp32,
fp16 or bf16 are the same one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModelIdentity:
    """What the catalog records about a model, so embeddings from different models never mix."""

    source: str  # as given to coca.load ("default", a folder, a hub id)
    config_hash: str  # config + a sample of the weights: a retrained model is a different model
    embed_dim: int


# Values sampled from the start of every weight tensor for the identity hash: enough to tell two
# trainings apart, cheap for a 600M-parameter model.
_WEIGHT_SAMPLE = 64


def model_identity(model: torch.nn.Module) -> ModelIdentity:
    """The model's catalog identity; equal for the same weights loaded in fp32, fp16 or bf16.

    `model` is a `coca.CoCa` (anything with `.config.to_dict()`, `.config.embed_dim`, and
    optionally `.source`).
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            sample = tensor.detach().reshape(-1)[:_WEIGHT_SAMPLE]
            if sample.is_floating_point():
                # bf16 is the coarsest dtype the model may be loaded in: round everything to it.
                sample = sample.to(torch.bfloat16).float()
            digest.update(sample.cpu().numpy().tobytes())
    source = str(getattr(model, "source", None) or "unknown")
    return ModelIdentity(source, digest.hexdigest()[:32], int(model.config.embed_dim))
