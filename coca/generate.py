"""Caption generation: the seed's `generate()` API over a KV-cached `IncrementalDecoder`.

`generate` keeps open_clip 3.3.0's `CoCa.generate` signature and defaults, adds
generation_type="greedy", and encodes each image once (never once per beam). The search algorithms
live in `sampling.py` (greedy, top-k, top-p) and `beam_search.py`; they only talk to the model
through the `coca.decoding.IncrementalDecoder` protocol, so tests can run them against a plain
uncached reference decoder.

Deliberate differences from the seed, each a fix: beam search scores log-probabilities (the seed
sums raw logits; see beam_search.py) and continues a text prompt (the seed ignores it); a (T0,)
prompt applies to every image and the result is always (B, T); a stopping criterion that flags a
row finishes that row (it then gets padding), as transformers' generate does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from coca.beam_search import beam_search
from coca.decoding import IncrementalDecoder
from coca.sampling import StoppingCriterion, sample

logger = logging.getLogger(__name__)

GENERATION_TYPES = ("beam_search", "greedy", "top_k", "top_p")


@dataclass(frozen=True)
class DecodingConfig:
    """How captions are decoded; the catalog stores it (dataclasses.asdict) next to each caption.

    Defaults are the seed's (open_clip 3.3.0 `CoCa.generate`).
    """

    seq_len: int = 30  # longest output, <start_of_text> and <end_of_text> included
    max_seq_len: int = 77  # the seed's context window; seq_len may not exceed it
    temperature: float = 1.0  # sampling only: probabilities ~ exp(filtered logits / temperature)
    generation_type: str = "beam_search"  # beam_search | greedy | top_k | top_p
    top_p: float = 0.1  # top_p sampling: keep the smallest set of tokens with mass >= top_p
    top_k: int = 1  # top_k sampling: keep the k most likely tokens (1 = greedy)
    num_beams: int = 6
    num_beam_groups: int = 3  # beams are searched in independent groups (no diversity penalty)
    min_seq_len: int = 5  # <end_of_text> is forbidden while the sequence is shorter than this
    repetition_penalty: float = 1.0  # HF's: shrink scores of tokens already in the sequence
    fixed_output_length: bool = False  # pad every output to exactly seq_len tokens
    length_penalty: float = 1.0  # beam score = sum of log-probs / length**length_penalty

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def is_beam_search(self) -> bool:
        return self.generation_type == "beam_search"


def _validate(c: DecodingConfig) -> None:
    """Raise ValueError naming the bad field and what to use instead."""
    if c.generation_type not in GENERATION_TYPES:
        raise ValueError(
            f"unknown generation_type {c.generation_type!r}: "
            f"use one of {', '.join(GENERATION_TYPES)}"
        )
    for name in ("seq_len", "max_seq_len", "top_k", "num_beams", "num_beam_groups", "min_seq_len"):
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if c.min_seq_len < 0:
        raise ValueError(f"min_seq_len must be >= 0, got {c.min_seq_len}")
    if c.seq_len <= c.min_seq_len:
        raise ValueError(f"seq_len ({c.seq_len}) must be larger than min_seq_len ({c.min_seq_len})")
    if c.seq_len > c.max_seq_len:
        raise ValueError(f"seq_len ({c.seq_len}) must be <= max_seq_len ({c.max_seq_len})")
    if not c.temperature > 0:
        raise ValueError(f"temperature must be > 0, got {c.temperature}")
    if not 0.0 <= c.top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1], got {c.top_p}")
    if c.top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {c.top_k}")
    if c.num_beams < 1 or c.num_beam_groups < 1:
        raise ValueError(
            f"num_beams ({c.num_beams}) and num_beam_groups ({c.num_beam_groups}) must be >= 1"
        )
    if c.num_beams % c.num_beam_groups:
        raise ValueError(
            f"num_beams ({c.num_beams}) must be divisible by num_beam_groups ({c.num_beam_groups})"
        )
    if not c.repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0, got {c.repetition_penalty}")
    if not isinstance(c.fixed_output_length, bool):
        raise ValueError(f"fixed_output_length must be a bool, got {c.fixed_output_length!r}")


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids the search needs; by default the model tokenizer's."""

    sot: int  # <start_of_text>: the default prompt
    eos: int  # <end_of_text>: ends a caption
    pad: int  # fills finished rows; in CLIP's vocabulary also the real token "!"

    @classmethod
    def from_model(
        cls, model: Any, sot: int | None = None, eos: int | None = None, pad: int | None = None
    ) -> SpecialTokens:
        tok = getattr(model, "tokenizer", None)
        cfg = getattr(model, "config", None)
        defaults = [
            getattr(tok, name, getattr(cfg, name, None))
            for name in ("sot_token_id", "eot_token_id", "pad_token_id")
        ]
        ids = [
            given if given is not None else default
            for given, default in zip((sot, eos, pad), defaults, strict=True)
        ]
        if any(i is None for i in ids):
            raise ValueError(
                "sot/eos/pad token ids are unknown: pass sot_token_id, eos_token_id and "
                "pad_token_id, or use a model with a tokenizer"
            )
        return cls(sot=int(ids[0]), eos=int(ids[1]), pad=int(ids[2]))


def generate(
    model: Any,
    image: torch.Tensor,
    text: torch.Tensor | None = None,
    seq_len: int = 30,
    max_seq_len: int = 77,
    temperature: float = 1.0,
    generation_type: str = "beam_search",
    top_p: float = 0.1,
    top_k: int = 1,
    pad_token_id: int | None = None,
    eos_token_id: int | None = None,
    sot_token_id: int | None = None,
    num_beams: int = 6,
    num_beam_groups: int = 3,
    min_seq_len: int = 5,
    stopping_criteria: Sequence[StoppingCriterion] | None = None,
    repetition_penalty: float = 1.0,
    fixed_output_length: bool = False,
    *,
    length_penalty: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Caption a batch of preprocessed images (B, 3, S, S); returns token ids (B, T), T <= seq_len.

    Rows start with the prompt (default <start_of_text>) and end with <end_of_text> unless they
    hit seq_len; shorter rows are padded with pad_token_id. `text` is an optional prompt, (T0,) for
    every image or (B, T0); unlike the seed, beam search honours it too. `generator` makes
    sampling reproducible. See DecodingConfig for the other arguments.
    """
    config = DecodingConfig(
        seq_len=seq_len,
        max_seq_len=max_seq_len,
        temperature=temperature,
        generation_type=generation_type,
        top_p=top_p,
        top_k=top_k,
        num_beams=num_beams,
        num_beam_groups=num_beam_groups,
        min_seq_len=min_seq_len,
        repetition_penalty=repetition_penalty,
        fixed_output_length=fixed_output_length,
        length_penalty=length_penalty,
    )
    special = SpecialTokens.from_model(model, sot_token_id, eos_token_id, pad_token_id)
    with eval_no_grad(model):
        encoding = model.encode_image_with_tokens(image)  # one vision pass per image
        return generate_from_tokens(
            model,
            encoding.tokens,
            config,
            text=text,
            special_tokens=special,
            stopping_criteria=stopping_criteria,
            generator=generator,
        )


def generate_from_tokens(
    model: Any,
    image_tokens: torch.Tensor,
    config: DecodingConfig,
    text: torch.Tensor | None = None,
    *,
    special_tokens: SpecialTokens | None = None,
    stopping_criteria: Sequence[StoppingCriterion] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Captions for images whose vision pass already ran: image_tokens (B, N, D) -> ids (B, T)."""
    special = special_tokens or SpecialTokens.from_model(model)
    if image_tokens.shape[0] == 0:
        raise ValueError("cannot caption an empty batch: pass at least one image")
    if generator is not None and generator.device.type != image_tokens.device.type:
        raise ValueError(
            f"the generator is on {generator.device} but decoding runs on {image_tokens.device}: "
            f"create it with torch.Generator(device={str(image_tokens.device)!r})"
        )
    with eval_no_grad(model):
        prompt = _prompt(text, special, image_tokens.shape[0], image_tokens.device, config)
        decoder = model.incremental_decoder(image_tokens, max_len=config.seq_len)
        return decode(decoder, prompt, config, special, stopping_criteria, generator)


def decode(
    decoder: IncrementalDecoder,
    prompt: torch.Tensor,
    config: DecodingConfig,
    special: SpecialTokens,
    stopping_criteria: Sequence[StoppingCriterion] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run the configured search on a fresh decoder, one row per image: prompt (B, T0) -> (B, T)."""
    if prompt.shape[1] >= config.seq_len:
        raise ValueError(
            f"the prompt has {prompt.shape[1]} tokens; seq_len ({config.seq_len}) must be larger"
        )
    if config.is_beam_search:
        return beam_search(decoder, prompt, config, special, stopping_criteria).tokens
    return sample(decoder, prompt, config, special, stopping_criteria, generator)


def caption_texts(model: Any, ids: torch.Tensor) -> list[str]:
    """Decode generated ids (B, T) to strings: drop <start_of_text>, cut at <end_of_text>, unpad."""
    special = SpecialTokens.from_model(model)
    rows = []
    for row in ids.tolist():
        if row and row[0] == special.sot:
            row = row[1:]
        if special.eos in row:
            row = row[: row.index(special.eos)]
        while row and row[-1] == special.pad:  # padding of a row that ended without <end_of_text>
            row.pop()
        rows.append(row)
    return [text.strip() for text in model.tokenizer.batch_decode(rows)]


def _prompt(
    text: torch.Tensor | None,
    special: SpecialTokens,
    batch: int,
    device: torch.device,
    config: DecodingConfig,
) -> torch.Tensor:
    """The first tokens of every row, (B, T0) long on the image tokens' device."""
    if text is None:
        return torch.full((batch, 1), special.sot, dtype=torch.long, device=device)
    if text.dim() == 1:
        text = text[None].expand(batch, -1)
    if text.dim() != 2 or text.shape[0] != batch or text.shape[1] == 0:
        raise ValueError(
            f"text prompt must be (T,) or (B={batch}, T) with T >= 1, got shape {tuple(text.shape)}"
        )
    if text.is_floating_point():
        raise ValueError("text prompt must hold integer token ids (use model.tokenizer)")
    return text.to(device=device, dtype=torch.long).contiguous()


class eval_no_grad:
    """Eval mode and no autograd for the duration of a generation, as the seed does."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.was_training = bool(getattr(model, "training", False))
        self.no_grad = torch.no_grad()

    def __enter__(self) -> None:
        self.no_grad.__enter__()
        if self.was_training:
            self.model.eval()

    def __exit__(self, *exc: object) -> None:
        if self.was_training:
            self.model.train(True)
        self.no_grad.__exit__(*exc)
