"""CoCa: contrastive image/text latents plus an image-conditioned caption decoder.

State-dict keys equal open_clip 3.3.0's CoCa (visual.*, text.*, text_decoder.*, logit_scale,
logit_bias): the module attribute names below and in vision.py / text.py / decoder.py / layers.py
are the single definition of that layout, and tests compare it key by key with open_clip.

Legend: B batch, L text length, N image tokens, D width, E embed_dim, V vocabulary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from coca.config import CocaConfig
from coca.decoder import FullPrefixDecoder, MultimodalDecoder
from coca.fused_step import compiled_one_token_step
from coca.incremental import CachedDecoder
from coca.text import TextTransformer
from coca.vision import VisionTransformer

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageEncoding:
    """One vision pass: what both retrieval and captioning need."""

    latent: torch.Tensor  # (B, E), L2-normalised
    tokens: torch.Tensor  # (B, N, D), the decoder's cross-attention context


@dataclass(frozen=True)
class CocaOutput:
    """forward(image, text), teacher forced: logits[:, i] predicts labels[:, i] = text[:, i+1]."""

    image_features: torch.Tensor  # (B, E), normalised
    text_features: torch.Tensor  # (B, E), normalised
    logits: torch.Tensor  # (B, L-1, V)
    labels: torch.Tensor  # (B, L-1)
    logit_scale: torch.Tensor  # exp of the learned temperature, 0-d (or (1,) if nonscalar)
    logit_bias: torch.Tensor | None


class CoCa(nn.Module):
    def __init__(self, config: CocaConfig) -> None:
        super().__init__()
        self.config = config
        self.visual = VisionTransformer(config)
        self.text = TextTransformer(config)
        self.text_decoder = MultimodalDecoder(config)
        shape = (1,) if config.nonscalar_logit_scale else ()
        self.logit_scale = nn.Parameter(torch.full(shape, config.init_logit_scale))
        bias = config.init_logit_bias
        self.logit_bias = None if bias is None else nn.Parameter(torch.full(shape, bias))
        # Set by coca.load: where the weights came from, the tokenizer (list[str] -> (B, L) ids,
        # .decode) and the image preprocessing (PIL -> (3, S, S)) that the weights expect.
        self.source: str | None = None
        self.tokenizer: Any = None
        self.preprocess: Any = None
        # Default for incremental_decoder(cuda_graphs=None); switch off to compare or debug.
        self.decode_with_cuda_graphs = True
        # Default for incremental_decoder(compile_step=None): torch.compile the one-token step
        # (coca.fused_step). Worth it for many batches (indexing); the first batch compiles.
        self.decode_compiled = False

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.text_decoder.text_projection.dtype

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward (training only) to save memory."""
        self.visual.grad_checkpointing = enable
        self.text.grad_checkpointing = enable
        self.text_decoder.grad_checkpointing = enable

    # --- input checks -----------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        size = self.config.vision.image_size
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(f"images must be a (B, 3, {size}, {size}) tensor, got {shape}")
        b, c, h, w = images.shape
        if b == 0:
            raise ValueError("images is an empty batch; pass at least one image")
        if c != 3 or h != size or w != size:
            raise ValueError(
                f"images must be (B, 3, {size}, {size}), got {tuple(images.shape)}; "
                "use model.preprocess to resize and normalise RGB images"
            )

    def _check_text(self, text: torch.Tensor) -> None:
        limit = self.config.text.context_length
        if not isinstance(text, torch.Tensor) or text.ndim != 2:
            raise ValueError("text must be a (B, L) tensor of token ids; use model.tokenizer")
        if text.shape[0] == 0 or text.shape[1] == 0:
            raise ValueError(f"text is empty (shape {tuple(text.shape)}); pass at least one token")
        if text.shape[1] > limit:
            raise ValueError(f"text has {text.shape[1]} tokens, more than context_length={limit}")
        if text.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"text must hold integer token ids, got dtype {text.dtype}")
        if int(text.min()) < 0 or int(text.max()) >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size})")

    # --- encoders ---------------------------------------------------------------------------
    def encode_image_with_tokens(self, images: torch.Tensor) -> ImageEncoding:
        """One vision pass -> normalised latent (B, E) and image tokens (B, N, D)."""
        self._check_images(images)
        latent, tokens = self.visual(images)
        return ImageEncoding(latent=F.normalize(latent, dim=-1), tokens=tokens)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, S, S) -> (B, E)."""
        self._check_images(images)
        latent, _ = self.visual(images)
        return F.normalize(latent, dim=-1) if normalize else latent

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, L) token ids -> (B, E)."""
        self._check_text(text)
        latent, _ = self.text(text)
        return F.normalize(latent, dim=-1) if normalize else latent

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> CocaOutput:
        """Latents of both towers and teacher-forced caption logits (labels = text[:, 1:])."""
        encoding = self.encode_image_with_tokens(image)
        self._check_text(text)
        text_latent, token_outputs = self.text(text)  # (B, E), (B, L, D)
        logits = self.text_decoder(encoding.tokens, token_outputs[:, :-1])  # (B, L-1, V)
        return CocaOutput(
            image_features=encoding.latent,
            text_features=F.normalize(text_latent, dim=-1),
            logits=logits,
            labels=text[:, 1:],
            logit_scale=self.logit_scale.exp(),
            logit_bias=self.logit_bias,
        )

    # --- decoding ---------------------------------------------------------------------------
    def _check_image_tokens(self, image_tokens: torch.Tensor) -> None:
        width = self.config.decoder.width
        if image_tokens.ndim != 3 or image_tokens.shape[2] != width or not image_tokens.shape[0]:
            raise ValueError(
                f"image_tokens must be (B>0, N, {width}) from encode_image_with_tokens, "
                f"got {tuple(image_tokens.shape)}"
            )

    def incremental_decoder(
        self,
        image_tokens: torch.Tensor,
        max_len: int | None = None,
        cuda_graphs: bool | None = None,
        compile_step: bool | None = None,
    ) -> CachedDecoder:
        """KV-cached decoder, one row per image. `max_len` caps the tokens fed in total (prompt
        included; default the decoder's context length): smaller means smaller caches.
        `cuda_graphs` replays one-token steps as CUDA graphs (CUDA only; under autocast too);
        None means `self.decode_with_cuda_graphs`. `compile_step` runs one-token steps through
        torch.compile (coca.fused_step); None means `self.decode_compiled`."""
        self._check_image_tokens(image_tokens)
        limit = min(self.config.decoder.context_length, self.config.text.context_length)
        max_len = limit if max_len is None else max_len
        if not 0 < max_len <= limit:
            raise ValueError(f"max_len must lie in [1, {limit}], got {max_len}")
        tokens = image_tokens.to(self.dtype)
        graphs = self.decode_with_cuda_graphs if cuda_graphs is None else cuda_graphs
        compiled = self.decode_compiled if compile_step is None else compile_step
        step = compiled_one_token_step() if compiled else None
        return CachedDecoder(self.text, self.text_decoder, tokens, max_len, graphs, step)

    def full_prefix_decoder(self, image_tokens: torch.Tensor) -> FullPrefixDecoder:
        """Uncached decoder with the same protocol (the reference for tests)."""
        self._check_image_tokens(image_tokens)
        return FullPrefixDecoder(self.text, self.text_decoder, image_tokens.to(self.dtype))

    def generate(
        self, image: torch.Tensor, text: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """open_clip-compatible generate (see coca.generate.generate for the arguments)."""
        from coca.generate import generate

        return generate(self, image, text, **kwargs)

    def generate_from_tokens(
        self, image_tokens: torch.Tensor, config: Any = None, **kwargs: Any
    ) -> torch.Tensor:
        """Captions for already-encoded images (B, N, D) -> ids (B, T); config is a
        coca.generate.DecodingConfig (default: the seed's beam search); kwargs go to
        coca.generate.generate_from_tokens (text, special_tokens, stopping_criteria, generator)."""
        from coca.generate import DecodingConfig, generate_from_tokens

        return generate_from_tokens(self, image_tokens, config or DecodingConfig(), **kwargs)

    @torch.no_grad()
    def caption(self, images: list[Image.Image], **decoding: Any) -> list[str]:
        """Caption PIL images; keyword arguments are generate()'s, e.g. generation_type="greedy"."""
        from coca.generate import caption_texts

        if not images:
            raise ValueError("caption() got no images; pass a non-empty list of PIL images")
        if self.tokenizer is None or self.preprocess is None:
            raise ValueError("caption() needs a tokenizer and preprocessing: load with coca.load")
        batch = torch.stack([self.preprocess(image) for image in images])  # (B, 3, S, S)
        tokens = self.generate(batch.to(self.device, self.dtype), **decoding)  # (B, T)
        return caption_texts(self, tokens)
