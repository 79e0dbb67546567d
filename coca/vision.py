"""The image tower: a ViT whose output is pooled by learned queries (open_clip's CoCa layout).

Query 0 of the attentional pooler becomes the image latent (after `proj`); queries 1.. are the image
tokens the decoder cross-attends to (not projected).

Legend: B images, P patches (+1 class token), Q pooler queries, N = Q - 1 image tokens,
W vision width, E embed_dim, H heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from coca.config import CocaConfig
from coca.layers import LayerNorm, ResidualBlock, split_heads


class PoolerAttention(nn.Module):
    """Multi-head attention with separate q/k/v weights (nn.MultiheadAttention's layout when the
    key width differs from the query width: q_proj_weight, k_proj_weight, v_proj_weight)."""

    def __init__(self, width: int, context_width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj_weight = nn.Parameter(torch.empty(width, width))
        self.k_proj_weight = nn.Parameter(torch.empty(width, context_width))
        self.v_proj_weight = nn.Parameter(torch.empty(width, context_width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        for weight in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            nn.init.xavier_uniform_(weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """queries (Q, E) shared by all images, context (B, P, W) -> (B, Q, E)."""
        e = queries.shape[-1]
        bq, bk, bv = self.in_proj_bias.split(e)
        q = split_heads(F.linear(queries, self.q_proj_weight, bq).unsqueeze(0), self.heads)
        k = split_heads(F.linear(context, self.k_proj_weight, bk), self.heads)  # (B, H, P, Dh)
        v = split_heads(F.linear(context, self.v_proj_weight, bv), self.heads)
        q = q.expand(context.shape[0], -1, -1, -1)  # (B, H, Q, Dh), a view: no copy per image
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, Q, Dh)
        out = out.transpose(1, 2).reshape(context.shape[0], -1, e)  # (B, Q, E)
        return self.out_proj(out)


class AttentionalPooler(nn.Module):
    """Learned queries attend to all ViT tokens (class token included); no residual."""

    def __init__(self, width: int, context_width: int, heads: int, n_queries: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, width))
        self.attn = PoolerAttention(width, context_width, heads)
        self.ln_q = LayerNorm(width)
        self.ln_k = LayerNorm(context_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P, W) -> (B, Q, E)."""
        queries = self.ln_q(self.query).to(x.dtype)  # (Q, E)
        return self.attn(queries, self.ln_k(x))


class VisionTransformer(nn.Module):
    """Key layout follows open_clip's `visual.*` (blocks live at transformer.resblocks.{i})."""

    def __init__(self, config: CocaConfig) -> None:
        super().__init__()
        v = config.vision
        self.image_size = v.image_size
        self.grad_checkpointing = False
        scale = v.width**-0.5
        self.conv1 = nn.Conv2d(
            3, v.width, kernel_size=v.patch_size, stride=v.patch_size, bias=False
        )
        self.class_embedding = nn.Parameter(scale * torch.randn(v.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(v.num_positions, v.width))
        self.ln_pre = LayerNorm(v.width)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(
            ResidualBlock(v.width, v.heads, v.mlp_ratio, config.quick_gelu) for _ in range(v.layers)
        )
        self.attn_pool = AttentionalPooler(config.embed_dim, v.width, v.pooler_heads, v.n_queries)
        self.ln_post = LayerNorm(config.embed_dim)
        self.proj = nn.Parameter(
            config.embed_dim**-0.5 * torch.randn(config.embed_dim, config.embed_dim)
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, S, S) -> (latent (B, E) unnormalised, image tokens (B, N, E))."""
        x = self.conv1(images.to(self.conv1.weight.dtype))  # (B, W, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, g*g, W)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, W)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, P, W)
        x = self.ln_pre(x)
        for block in self.transformer.resblocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        pooled = self.ln_post(self.attn_pool(x))  # (B, Q, E)
        latent = pooled[:, 0] @ self.proj  # (B, E)
        return latent, pooled[:, 1:]
