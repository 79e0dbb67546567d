"""Tokenizer: CLIP BPE parity with open_clip, word-level vocabularies, files, truncation."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import pytest
import torch

from coca.tokenizer import CLIP_VOCAB_SIZE, Tokenizer, clean_text

PARITY_TEXTS = [
    "a photo of a cat",
    "A Photo Of A CAT",
    "TWO DOGS PLAYING IN THE SNOW",
    "Hello, world! How are you?? ... (fine) [ok] {yes} <no>",
    "prices: $3.50, 100%, #1, @home, a/b\\c, x*y=z^2; 'quoted' \"double\"",
    "1234567890 and 3.14159 and 1,000,000 and 2nd 3rd 21st",
    "it's, don't, they're, we've, i'm, you'll, he'd",
    "IT'S DON'T THEY'RE WE'VE I'M YOU'LL HE'D",
    "rock 'n' roll, the '90s, o'clock",
    "fish &amp; chips &lt;b&gt; &quot;quoted&quot; &#39;single&#39;",
    "double escaped &amp;amp; ampersand",
    "naïve café résumé über straße",
    "Ελληνικά κείμενο και русский текст",
    "東京タワーの夜景 and 北京 and 서울",
    "emoji 😀🎉👍🏽 and flags 🇫🇷 and ❤️",
    "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
    "Ã©tÃ© Ã  Paris",
    "   leading and trailing spaces   ",
    "multiple   spaces\n\nnewlines\ttabs\r\nand\u00a0nbsp",
    "",
    "   ",
    "!!!???...",
    "a" * 300,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "snake_case and kebab-case and camelCase and PascalCase",
    "http://example.com/path?query=1&x=2 user@example.org",
    "zero-width\u200bjoiner and soft\u00adhyphen and combining e\u0301",
    "arabic مرحبا بالعالم and hebrew שלום עולם",
    "हिन्दी पाठ and ไทย and ქართული",
    "math ∑ ∫ √ ≤ ≥ ≠ ∞ and arrows → ← ↑ and © ® ™ °",
    "fullwidth ＡＢＣ １２３ and roman Ⅳ and superscript x²",
    "a picture of <start_of_text> a dog <end_of_text> here",
    "x's<end_of_text> !<end_of_text> '<start_of_text>",
    "dog " * 100,
    "one. two! three? four; five: six",
]


@pytest.fixture(scope="module")
def clip_tokenizer() -> Tokenizer:
    return Tokenizer.clip()


@pytest.fixture(scope="module")
def reference_tokenizer():
    open_clip = pytest.importorskip("open_clip")
    return open_clip.get_tokenizer("coca_ViT-B-32")


def test_tokenizer_clip_special_ids(clip_tokenizer: Tokenizer) -> None:
    assert clip_tokenizer.vocab_size == CLIP_VOCAB_SIZE
    assert clip_tokenizer.sot_token_id == 49406
    assert clip_tokenizer.eot_token_id == 49407
    assert clip_tokenizer.pad_token_id == 0
    assert clip_tokenizer.context_length == 76


def test_tokenizer_clip_matches_open_clip_batch(
    clip_tokenizer: Tokenizer, reference_tokenizer
) -> None:
    ours = clip_tokenizer(PARITY_TEXTS)
    expected = reference_tokenizer(PARITY_TEXTS)
    assert ours.dtype == torch.long
    assert ours.shape == expected.shape == (len(PARITY_TEXTS), 76)
    mismatched = [
        text
        for text, a, b in zip(PARITY_TEXTS, ours, expected, strict=True)
        if not torch.equal(a, b)
    ]
    assert mismatched == []


@pytest.mark.parametrize("text", PARITY_TEXTS)
def test_tokenizer_clip_encode_matches_open_clip(
    clip_tokenizer: Tokenizer, reference_tokenizer, text: str
) -> None:
    assert clip_tokenizer.encode(text) == reference_tokenizer.encode(text)


def test_tokenizer_clip_single_string_and_context_override(
    clip_tokenizer: Tokenizer, reference_tokenizer
) -> None:
    text = "a dog running on the beach at sunset"
    assert clip_tokenizer(text).shape == (1, 76)
    assert torch.equal(
        clip_tokenizer(text, context_length=8), reference_tokenizer(text, context_length=8)
    )


def test_tokenizer_clip_truncation_ends_with_eot(clip_tokenizer: Tokenizer) -> None:
    text = " ".join(f"word{i}" for i in range(200))
    row = clip_tokenizer(text)[0]
    full = clip_tokenizer.encode(text)
    assert len(full) > 76
    assert row[0].item() == 49406
    assert row[-1].item() == 49407
    assert row[1:-1].tolist() == full[:74]  # 76 - start - forced end


def test_tokenizer_clip_exact_fit_is_not_truncated(clip_tokenizer: Tokenizer) -> None:
    ids = clip_tokenizer.encode("cat " * 74)
    assert len(ids) == 74
    row = clip_tokenizer("cat " * 74)[0].tolist()
    assert row == [49406, *ids, 49407]


def test_tokenizer_clip_empty_text_is_start_end(clip_tokenizer: Tokenizer) -> None:
    row = clip_tokenizer([""])[0].tolist()
    assert row[:2] == [49406, 49407]
    assert set(row[2:]) == {0}


def test_tokenizer_clean_text_collapses_and_lowercases() -> None:
    assert clean_text("  Fish &amp;amp; CHIPS\n\tnow ") == "fish & chips now"


def test_tokenizer_clip_decode_round_trip(clip_tokenizer: Tokenizer) -> None:
    texts = ["a photo of a cat!", "tokyo 東京 😀 café", "it's 2024"]
    decoded = clip_tokenizer.batch_decode(clip_tokenizer(texts))
    assert decoded == ["a photo of a cat !", "tokyo 東京 😀 café", "it 's 2 0 2 4"]


def test_tokenizer_clip_decode_matches_open_clip(clip_tokenizer: Tokenizer) -> None:
    open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")
    reference = open_clip_tokenizer.SimpleTokenizer()
    for text in PARITY_TEXTS[:20]:
        ids = clip_tokenizer.encode(text)
        assert clip_tokenizer.decode(ids) == reference.decode(ids).strip()


def test_tokenizer_decode_stops_at_eot_and_drops_trailing_pad(clip_tokenizer: Tokenizer) -> None:
    dog, cat = clip_tokenizer.encode("dog")[0], clip_tokenizer.encode("cat")[0]
    assert clip_tokenizer.decode([49406, dog, 49407, cat, 0]) == "dog"
    assert clip_tokenizer.decode(torch.tensor([49406, dog, 0, 0])) == "dog"
    with pytest.raises(ValueError, match="one row"):
        clip_tokenizer.decode(torch.zeros(2, 3, dtype=torch.long))


def test_tokenizer_batch_decode_equals_decode_row_by_row(clip_tokenizer: Tokenizer) -> None:
    word_level = Tokenizer.build_word_level(["a red car, a blue tree."], context_length=8)
    for tokenizer in (clip_tokenizer, word_level):
        generator = torch.Generator().manual_seed(0)
        rows = torch.randint(0, tokenizer.vocab_size, (64, 12), generator=generator)
        special = (tokenizer.sot_token_id, tokenizer.eot_token_id, tokenizer.pad_token_id)
        for column, token in ((0, special[0]), (5, special[1]), (9, special[2])):
            rows[::3, column] = token  # some rows start, end early or pad
        rows[1::4, 7:] = special[2]  # trailing pads without <end_of_text>
        one_by_one = [tokenizer.decode(row) for row in rows]
        assert tokenizer.batch_decode(rows) == one_by_one
        assert tokenizer.batch_decode(rows.tolist()) == one_by_one
    texts = word_level.batch_decode(rows)
    assert any("," in text for text in texts)
    assert not any(" ," in text or " ." in text for text in texts)  # punctuation attached
    with pytest.raises(ValueError, match="rows"):
        clip_tokenizer.batch_decode(torch.zeros(3, dtype=torch.long))


def test_tokenizer_rejects_non_string(clip_tokenizer: Tokenizer) -> None:
    with pytest.raises(TypeError, match="str"):
        clip_tokenizer([b"bytes"])  # type: ignore[list-item]


def test_tokenizer_word_level_round_trip() -> None:
    tokenizer = Tokenizer.build_word_level(
        ["A red Car", "a blue car,", "car", "tree"], context_length=8
    )
    assert (tokenizer.pad_token_id, tokenizer.sot_token_id, tokenizer.eot_token_id) == (0, 1, 2)
    assert tokenizer.vocab_size == 4 + len(["a", "red", "car", "blue", ",", "tree"])
    ids = tokenizer(["A blue TREE, a car", "unknown words here"])
    assert ids.shape == (2, 8)
    assert ids[0].tolist() == [1, 4, 7, 9, 8, 4, 6, 2]
    assert ids[1].tolist() == [1, 3, 3, 3, 2, 0, 0, 0]  # <unk> x3
    assert tokenizer.decode(ids[0]) == "a blue tree, a car"  # punctuation attached


def test_tokenizer_word_level_truncation() -> None:
    tokenizer = Tokenizer.build_word_level(["x"], context_length=4)
    assert tokenizer("x x x x x")[0].tolist() == [1, 4, 4, 2]


def test_tokenizer_save_from_file_round_trip(tmp_path: Path) -> None:
    tokenizer = Tokenizer.build_word_level(["a dog", "a cat"], context_length=12)
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    loaded = Tokenizer.from_file(path)
    assert loaded.context_length == 12
    assert (loaded.sot_token_id, loaded.eot_token_id, loaded.pad_token_id) == (1, 2, 0)
    texts = ["A dog and a cat", ""]
    assert torch.equal(loaded(texts), tokenizer(texts))
    assert loaded.encode("a cat") == tokenizer.encode("a cat")  # saved padding does not leak


def test_tokenizer_clip_save_from_file_round_trip(
    tmp_path: Path, clip_tokenizer: Tokenizer
) -> None:
    path = tmp_path / "tokenizer.json.gz"
    plain = tmp_path / "plain.json"
    clip_tokenizer.save(plain)
    path.write_bytes(gzip.compress(plain.read_bytes()))
    loaded = Tokenizer.from_file(path, context_length=20)
    assert loaded.context_length == 20
    assert loaded.pad_token_id == 0
    assert torch.equal(loaded(PARITY_TEXTS), clip_tokenizer(PARITY_TEXTS, context_length=20))


def test_tokenizer_from_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        Tokenizer.from_file(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid"):
        Tokenizer.from_file(broken)
    good = tmp_path / "good.json"
    Tokenizer.build_word_level(["a"], context_length=4).save(good)
    with pytest.raises(ValueError, match="not in this tokenizer's vocabulary"):
        Tokenizer.from_file(good, sot_token="<bos>")


def test_tokenizer_pickles_for_worker_processes(clip_tokenizer: Tokenizer) -> None:
    restored = pickle.loads(pickle.dumps(clip_tokenizer))
    texts = ["a dog", "x's<end_of_text>"]
    assert torch.equal(restored(texts), clip_tokenizer(texts))


def test_tokenizer_rejects_tiny_context() -> None:
    with pytest.raises(ValueError, match="context_length"):
        Tokenizer.build_word_level(["a"], context_length=1)
