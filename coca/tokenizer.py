"""Text -> token ids for the text tower and back, on top of the `tokenizers` library.

Two vocabularies are used by the project:

* CLIP's byte-pair encoding (`Tokenizer.clip()`), which the public open_clip CoCa checkpoints were
  trained with. Its ids equal open_clip's tokenizer output; the BPE data ships in `coca/assets/`
  (built by `scripts/build_clip_tokenizer.py`), so nothing is downloaded.
* A small word-level vocabulary (`Tokenizer.build_word_level`) for models trained by this project;
  such a model's bundle carries its own `tokenizer.json` (`Tokenizer.from_file`).

Both share the layout the model expects: `<start_of_text> ids... <end_of_text>` padded to a fixed
context length.
"""

from __future__ import annotations

import gzip
import html
import json
import logging
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import tokenizers
import torch
from tokenizers import AddedToken, Regex, models, normalizers, pre_tokenizers

_PUNCTUATION_GAP = re.compile(r" ([,.;:!?])")
logger = logging.getLogger(__name__)

SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
CLIP_ASSET = Path(__file__).resolve().parent / "assets" / "clip_bpe_tokenizer.json.gz"
CLIP_VOCAB_SIZE = 49408
COCA_CONTEXT_LENGTH = 76  # CoCa's text tower appends a cls token to 76 text positions (77 in all)


def clean_text(text: str) -> str:
    """open_clip's text cleaning: repair mojibake, unescape HTML, collapse spaces, lower-case.

    `html.unescape` runs twice because captions scraped from the web are often escaped twice
    (`&amp;amp;`); the checkpoints were trained on text cleaned this way.
    """
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


@lru_cache(maxsize=1)
def _clip_json() -> str:
    return gzip.decompress(CLIP_ASSET.read_bytes()).decode("utf-8")


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the start/end/pad conventions of the CoCa text tower.

    `tokenizer(texts)` returns a LongTensor (B, context_length): `<start_of_text>`, the ids of the
    cleaned text, `<end_of_text>`, then the pad id. Text too long for the context is truncated to
    `context_length` ids and its last kept id is replaced by `<end_of_text>`, exactly as open_clip
    does, so a truncated row always ends with `<end_of_text>` and never with padding.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        context_length: int,
        sot_token_id: int,
        eot_token_id: int,
        pad_token_id: int,
    ) -> None:
        if context_length < 2:
            raise ValueError(
                f"context_length must be at least 2 (start + end), got {context_length}"
            )
        vocab_size = backend.get_vocab_size(with_added_tokens=True)
        for name, token_id in (("sot", sot_token_id), ("eot", eot_token_id), ("pad", pad_token_id)):
            if not 0 <= token_id < vocab_size:
                raise ValueError(
                    f"{name}_token_id {token_id} is outside the vocabulary (0..{vocab_size - 1})"
                )
        # Padding/truncation stored in a tokenizer.json must not leak into encode(): we pad here.
        backend.no_padding()
        backend.no_truncation()
        self._backend = backend
        # A word-level vocabulary decodes by joining words with spaces ("circle , a"); captions
        # read naturally with punctuation attached to the word before it ("circle, a").
        self._attach_punctuation = isinstance(backend.model, models.WordLevel)
        self._context_length = context_length
        self._sot = sot_token_id
        self._eot = eot_token_id
        self._pad = pad_token_id
        self._special_literals = tuple(
            t.content for t in backend.get_added_tokens_decoder().values()
        )
        self._literal_splitter = _special_aware_splitter(backend, self._special_literals)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def clip(cls, context_length: int = COCA_CONTEXT_LENGTH) -> Tokenizer:
        """CLIP's BPE (49408 ids; <start_of_text> 49406, <end_of_text> 49407, pad 0), offline."""
        backend = tokenizers.Tokenizer.from_str(_clip_json())
        return cls(
            backend,
            context_length=context_length,
            sot_token_id=_require_id(backend, SOT_TOKEN),
            eot_token_id=_require_id(backend, EOT_TOKEN),
            pad_token_id=0,  # open_clip pads with zeros, which is also the id of "!"
        )

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        context_length: int | None = None,
        sot_token: str = SOT_TOKEN,
        eot_token: str = EOT_TOKEN,
        pad_token: str | None = None,
    ) -> Tokenizer:
        """Load a `tokenizers` tokenizer.json (optionally gzipped), e.g. from a model bundle.

        `context_length` and `pad_token` default to what `save` stored in the file's padding
        settings; without them, context 76 and the id of "<pad>" (0 if there is no such token).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8")
        try:
            backend = tokenizers.Tokenizer.from_str(text)
        except Exception as error:  # tokenizers raises a bare Exception for malformed JSON
            raise ValueError(f"{path} is not a valid tokenizers tokenizer.json: {error}") from error
        saved = backend.padding or {}
        if context_length is None:
            context_length = saved.get("length") or COCA_CONTEXT_LENGTH
        if pad_token is not None:
            pad_id = _require_id(backend, pad_token)
        else:
            fallback = backend.token_to_id(PAD_TOKEN)
            pad_id = saved.get("pad_id", 0 if fallback is None else fallback)
        return cls(
            backend,
            context_length=context_length,
            sot_token_id=_require_id(backend, sot_token),
            eot_token_id=_require_id(backend, eot_token),
            pad_token_id=pad_id,
        )

    @classmethod
    def build_word_level(cls, words: Iterable[str], context_length: int) -> Tokenizer:
        """Word-level vocabulary: "<pad>"=0, "<start_of_text>"=1, "<end_of_text>"=2, "<unk>"=3, ...

        Text is cleaned and lower-cased and split into runs of word characters and runs of
        punctuation; every piece of `words` becomes one entry, in first-seen order.
        """
        normalizer = normalizers.Lowercase()
        splitter = pre_tokenizers.Whitespace()
        specials = (PAD_TOKEN, SOT_TOKEN, EOT_TOKEN, UNK_TOKEN)
        vocab = {token: index for index, token in enumerate(specials)}
        for word in words:
            for piece, _ in splitter.pre_tokenize_str(normalizer.normalize_str(clean_text(word))):
                vocab.setdefault(piece, len(vocab))
        backend = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
        backend.normalizer = normalizer
        backend.pre_tokenizer = splitter
        backend.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t in specials]
        )
        return cls(
            backend, context_length=context_length, sot_token_id=1, eot_token_id=2, pad_token_id=0
        )

    def save(self, path: str | Path) -> None:
        """Write a tokenizer.json; its padding settings record the context length and pad id."""
        backend = tokenizers.Tokenizer.from_str(self._backend.to_str())
        pad_token = backend.id_to_token(self._pad) or ""
        backend.enable_padding(pad_id=self._pad, pad_token=pad_token, length=self._context_length)
        Path(path).write_text(backend.to_str(pretty=False), encoding="utf-8")

    # ---- properties ---------------------------------------------------------------------------

    @property
    def sot_token_id(self) -> int:
        return self._sot

    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def pad_token_id(self) -> int:
        return self._pad

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def context_length(self) -> int:
        return self._context_length

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, context_length={self._context_length}, "
            f"sot={self._sot}, eot={self._eot}, pad={self._pad})"
        )

    # ---- encoding -----------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Ids of the cleaned text, without start/end tokens and without truncation."""
        return self._encode_batch([text])[0]

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> torch.Tensor:
        """LongTensor (B, context_length): <start_of_text> ids <end_of_text> pad..., truncated."""
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self._context_length
        if length < 2:
            raise ValueError(f"context_length must be at least 2 (start + end), got {length}")
        result = torch.full((len(texts), length), self._pad, dtype=torch.long)  # (B, T)
        for row, ids in enumerate(self._encode_batch(texts)):
            tokens = [self._sot, *ids, self._eot]
            if len(tokens) > length:
                tokens = tokens[:length]
                tokens[-1] = self._eot
            result[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return result

    def _encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"expected text as str, got {type(text).__name__}")
        cleaned = [clean_text(text) for text in texts]
        encodings = self._backend.encode_batch(cleaned, add_special_tokens=False)
        ids = [encoding.ids for encoding in encodings]
        for row, text in enumerate(cleaned):
            if self._literal_splitter is not None and any(
                s in text for s in self._special_literals
            ):
                ids[row] = self._encode_with_literals(text)
        return ids

    def _encode_with_literals(self, text: str) -> list[int]:
        """Encode text that spells out a special token, such as "<end_of_text>".

        open_clip's word split reads such a spelling as the special token only where a word may
        start: after a space, a letter or a digit, not after other symbols ("!<end_of_text>" is
        plain text). `tokenizers` would match it anywhere, so the text is split into words the way
        open_clip does first, and each word is encoded on its own.
        """
        assert self._literal_splitter is not None  # checked by the caller
        words = [word for word, _ in self._literal_splitter.pre_tokenize_str(text)]
        if not words:
            return []
        return self._backend.encode(words, is_pretokenized=True, add_special_tokens=False).ids

    # ---- decoding -----------------------------------------------------------------------------

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of one row of ids: stops at <end_of_text>, drops special tokens and trailing pads.

        For CLIP's BPE the pad id (0) is also the word "!", so only padding at the end of a row is
        dropped; "!" before <end_of_text> is kept.
        """
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode takes one row of ids (T,), got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        text = self._backend.decode(self._kept_ids(ids), skip_special_tokens=True)
        return self._tidy(text)

    def batch_decode(self, rows: Sequence[Sequence[int]] | torch.Tensor) -> list[str]:
        """`decode` for each row of a (B, T) tensor or a list of id lists.

        One `decode_batch` call for all rows: a captioned batch of 512 costs about half the host
        time of 512 `decode` calls, on the indexer's model thread.
        """
        if isinstance(rows, torch.Tensor):
            if rows.dim() != 2:
                raise ValueError(
                    f"batch_decode takes rows of ids (B, T), got shape {tuple(rows.shape)}"
                )
            rows = rows.tolist()
        kept = [self._kept_ids(row) for row in rows]
        return [
            self._tidy(text) for text in self._backend.decode_batch(kept, skip_special_tokens=True)
        ]

    def _kept_ids(self, ids: Sequence[int]) -> list[int]:
        """The ids `decode` turns into text: up to <end_of_text>, no <start_of_text>, no trailing
        pads."""
        kept = list(ids)
        if self._eot in kept:
            kept = kept[: kept.index(self._eot)]
        else:
            while kept and kept[-1] == self._pad:
                kept.pop()
        return [i for i in kept if i != self._sot]

    def _tidy(self, text: str) -> str:
        text = text.strip()
        return _PUNCTUATION_GAP.sub(r"\1", text) if self._attach_punctuation else text


def _require_id(backend: tokenizers.Tokenizer, token: str) -> int:
    token_id = backend.token_to_id(token)
    if token_id is None:
        raise ValueError(
            f"token {token!r} is not in this tokenizer's vocabulary; pass the name it uses for it"
        )
    return token_id


def _special_aware_splitter(
    backend: tokenizers.Tokenizer, special_literals: Sequence[str]
) -> pre_tokenizers.PreTokenizer | None:
    """For a CLIP-style tokenizer (regex word split first), the same split that also isolates
    spelled-out special tokens where that regex would see them; None for other tokenizers."""
    if backend.pre_tokenizer is None or not special_literals:
        return None
    state = json.loads(backend.pre_tokenizer.__getstate__())
    first = state["pretokenizers"][0] if state.get("type") == "Sequence" else state
    pattern = first.get("pattern", {}).get("Regex") if first.get("type") == "Split" else None
    if pattern is None or not first.get("invert") or first.get("behavior") != "Removed":
        return None
    literals = "|".join(_escape_literal(s) for s in special_literals)
    return pre_tokenizers.Split(Regex(f"{literals}|{pattern}"), behavior="removed", invert=True)


def _escape_literal(text: str) -> str:
    return "".join(f"\\x{{{ord(c):X}}}" for c in text)
