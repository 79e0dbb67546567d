"""The text tower: a causal transformer with a learned cls embedding appended after the tokens.

The cls output (after ln_final and text_projection) is the text latent; the per-token outputs,
before ln_final, are what the multimodal decoder reads.

Legend: B texts, L tokens, D text width, E embed_dim.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from coca.config import CocaConfig
from coca.layers import LayerNorm, ResidualBlock


def legacy_key_mask(
    tokens: torch.Tensor, pad_id: int, previous: torch.Tensor | None
) -> torch.Tensor:
    """Which key positions may be attended, as open_clip's CoCa text tower decides (B, T) bool.

    open_clip builds the pad mask for the appended cls token shifted by one (`correct_cls_mask`
    False, kept for the published weights) and applies it to every query row: key j is valid iff
    j == 0 or token j-1 is not pad. `previous` (B,) is the token before `tokens`' first position,
    None when `tokens` starts the sequence. Note that pad id 0 is also CLIP's real token "!".
    """
    first = torch.ones_like(tokens[:, :1], dtype=torch.bool)  # (B, 1)
    if previous is not None:
        first = (previous != pad_id).unsqueeze(1)
    return torch.cat([first, tokens[:, :-1] != pad_id], dim=1)  # (B, T)


def causal_mask(key_valid: torch.Tensor, n_queries: int) -> torch.Tensor:
    """Boolean attention mask (B, 1, Tq, Tk) for the last `n_queries` of Tk positions: causal and
    restricted to valid keys (key_valid (B, Tk))."""
    tk = key_valid.shape[1]
    q_pos = torch.arange(tk - n_queries, tk, device=key_valid.device).unsqueeze(1)  # (Tq, 1)
    k_pos = torch.arange(tk, device=key_valid.device).unsqueeze(0)  # (1, Tk)
    causal = k_pos <= q_pos  # (Tq, Tk)
    return (causal.unsqueeze(0) & key_valid.unsqueeze(1)).unsqueeze(1)  # (B, 1, Tq, Tk)


class TextTransformer(nn.Module):
    """Key layout follows open_clip's `text.*`."""

    def __init__(self, config: CocaConfig) -> None:
        super().__init__()
        t = config.text
        self.pad_id = t.pad_id
        self.context_length = t.context_length
        self.grad_checkpointing = False
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.cls_emb = nn.Parameter(torch.empty(t.width))
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length + 1, t.width))
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(
            ResidualBlock(t.width, t.heads, t.mlp_ratio, config.quick_gelu) for _ in range(t.layers)
        )
        self.ln_final = LayerNorm(t.width)
        self.text_projection = nn.Parameter(torch.empty(t.width, config.embed_dim))
        self._init_weights(t.width, t.layers)

    def _init_weights(self, width: int, layers: int) -> None:
        # open_clip's text-tower init (GPT-2 style scaled residual projections).
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.cls_emb, std=0.01)
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def embed(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Token + positional embeddings for tokens (B, T) at positions start.. -> (B, T, D)."""
        dtype = self.positional_embedding.dtype
        pos = self.positional_embedding[start : start + tokens.shape[1]]
        return self.token_embedding(tokens).to(dtype) + pos

    def forward(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """text (B, L) -> (latent (B, E) unnormalised, token outputs (B, L, D) before ln_final)."""
        b, length = text.shape
        tokens = self.token_embedding(text).to(self.positional_embedding.dtype)  # (B, L, D)
        cls = self.cls_emb.to(tokens.dtype).expand(b, 1, -1)  # (B, 1, D)
        x = torch.cat([tokens, cls], dim=1) + self.positional_embedding[: length + 1]
        # Keys 0..L (the cls slot included): position j is valid iff j == 0 or text[j-1] != pad.
        first = torch.ones_like(text[:, :1], dtype=torch.bool)
        key_valid = torch.cat([first, text != self.pad_id], dim=1)  # (B, L+1)
        mask = causal_mask(key_valid, length + 1)  # (B, 1, L+1, L+1)
        for block in self.transformer.resblocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask=mask)
        latent = self.ln_final(x[:, -1]) @ self.text_projection  # (B, E)
        return latent, x[:, :-1]
