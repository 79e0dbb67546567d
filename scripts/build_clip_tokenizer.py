"""Build coca/assets/clip_bpe_tokenizer.json.gz from CLIP's BPE merges (a developer script).

CLIP's byte-pair encoding ships as `bpe_simple_vocab_16e6.txt.gz` (a header line, then one merge per
line) inside open_clip's wheel. This script turns the merges the tokenizer uses into a `tokenizers`
tokenizer.json so that the project needs no network and no open_clip at run time. Run it once:

    .venv/bin/python scripts/build_clip_tokenizer.py [path/to/bpe_simple_vocab_16e6.txt.gz]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import logging
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

logger = logging.getLogger(__name__)

OUTPUT = Path(__file__).resolve().parent.parent / "coca" / "assets" / "clip_bpe_tokenizer.json.gz"
# CLIP keeps the first 49152 - 256 - 2 merges of the file (after its header line).
N_MERGES = 49152 - 256 - 2
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
# CLIP's word split: common English contractions, letter runs, single digits, runs of other symbols;
# whitespace is dropped (it never reaches the BPE). The original is a case-insensitive pattern for
# the `regex` package; its letter/digit/space classes are spelled out below as explicit code-point
# ranges so that the result does not depend on the Unicode tables of the Oniguruma engine inside
# `tokenizers` (they lag behind `regex`'s: characters added in Unicode 15+ would split differently).
CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for raw bytes, in CLIP's vocabulary order.

    Printable Latin-1 bytes stand for themselves; the others (controls, space, soft hyphen) are
    moved to code points 256 and up so that no BPE symbol is whitespace or a control character.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += list(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def _ranges(code_points: list[int]) -> str:
    """Sorted code points as an Oniguruma character-class body of ranges."""
    parts: list[str] = []
    start = previous = code_points[0]
    for cp in [*code_points[1:], -1]:
        if cp == previous + 1:
            previous = cp
            continue
        parts.append(f"\\x{{{start:X}}}" + (f"-\\x{{{previous:X}}}" if previous > start else ""))
        start = previous = cp
    return "".join(parts)


def word_pattern() -> str:
    """CLIP's split pattern with classes taken from the `regex` package that open_clip uses."""
    import regex  # dev-time only: installed with open_clip

    flags = regex.IGNORECASE
    letter = regex.compile(r"[\p{L}]", flags)
    digit = regex.compile(r"[\p{N}]", flags)
    symbol = regex.compile(r"[^\s\p{L}\p{N}]", flags)
    # Surrogates cannot occur in UTF-8 text, so they stay out of the classes.
    chars = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    letters = [cp for cp in chars if letter.fullmatch(chr(cp))]
    digits = [cp for cp in chars if digit.fullmatch(chr(cp))]
    # Characters in no class are skipped like whitespace (e.g. U+0345, which folds to a letter).
    classified = set(letters) | set(digits)
    skipped = [cp for cp in chars if cp not in classified and not symbol.fullmatch(chr(cp))]
    letter_class, digit_class = _ranges(letters), _ranges(digits)
    other = f"[^{letter_class}{digit_class}{_ranges(skipped)}]+"
    return f"{CONTRACTIONS}|[{letter_class}]+|[{digit_class}]|{other}"


def read_merges(bpe_path: Path) -> list[tuple[str, str]]:
    lines = gzip.decompress(bpe_path.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    if len(merges) != N_MERGES or any(len(pair) != 2 for pair in merges):
        raise ValueError(f"{bpe_path} does not look like CLIP's bpe_simple_vocab_16e6.txt.gz")
    return merges  # type: ignore[return-value]


def build_tokenizer(merges: list[tuple[str, str]]) -> HFTokenizer:
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(pair) for pair in merges]
    vocab = {token: index for index, token in enumerate(tokens)}
    for offset, special in enumerate(SPECIAL_TOKENS):
        vocab[special] = len(tokens) + offset
    bpe = models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", fuse_unk=False)
    tokenizer = HFTokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(word_pattern()), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    # Byte-level symbols back to UTF-8 text; the end-of-word marker becomes a space.
    tokenizer.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace("</w>", " ")])
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    return tokenizer


def default_bpe_path() -> Path:
    spec = importlib.util.find_spec("open_clip")  # locates the wheel without importing it
    if spec is None or spec.origin is None:
        raise SystemExit(
            "open_clip is not installed; pass the path to bpe_simple_vocab_16e6.txt.gz"
        )
    return Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bpe_path", nargs="?", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    tokenizer = build_tokenizer(read_merges(args.bpe_path or default_bpe_path()))
    if tokenizer.get_vocab_size() != 49408:
        raise SystemExit(f"expected 49408 tokens, built {tokenizer.get_vocab_size()}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 keeps the gzip byte-identical across rebuilds.
    data = gzip.compress(tokenizer.to_str().encode("utf-8"), compresslevel=9, mtime=0)
    args.output.write_bytes(data)
    logging.basicConfig(level=logging.INFO)
    logger.info("wrote %s (%d bytes)", args.output, len(data))


if __name__ == "__main__":
    main()
