"""The contract between the model (which owns the KV cache) and the search algorithms.

The model builds an `IncrementalDecoder` for a batch of images; the search algorithms in
generate.py only feed it tokens, read next-token logits and reorder its rows. Keeping this seam
narrow lets generate.py be tested against a plain, uncached reference decoder with the same
protocol.
"""

from __future__ import annotations

from typing import Protocol

import torch


class IncrementalDecoder(Protocol):
    """Next-token logits for a batch of growing sequences, one row per hypothesis."""

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append `tokens` (B, T_new) to every row; return logits for the last position, (B, V).

        The first call passes the prompt (usually just <start_of_text>, T_new = 1); later calls
        pass one token per row. Finished rows still receive a (pad) token so shapes stay
        rectangular.
        """
        ...

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep, drop or duplicate rows: afterwards row i holds what row `rows[i]` held, (B',).

        Used by beam search to follow surviving beams and by batched decoding to drop finished
        rows.
        """
        ...
