"""The world's words: phrase tables shared by the caption writer and the parser, and what a parse
yields.

Every phrase here is lowercase, space-separated words; the parser matches them as token sequences,
so anything the writer can say, the parser can read back.
"""

from __future__ import annotations

from dataclasses import dataclass

from coca.world.scene import BACKGROUNDS, COLORS, KINDS, RELATIONS, SIZES

PLURALS: dict[str, str] = {kind: kind + "s" for kind in KINDS}
NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three"}
ARTICLES: tuple[str, ...] = ("a", "an")

SIZE_PHRASES: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left_of": ("to the left of", "left of", "on the left of"),
    "right_of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
# Said after the objects: "a red car on the beach".
BACKGROUND_PHRASES: dict[str, tuple[str, ...]] = {
    "sky": ("in the sky", "against the sky", "up in the sky"),
    "grass": ("on the grass", "in a grassy field", "on a lawn"),
    "beach": ("on the beach", "on a sandy beach", "by the sea"),
    "snow": ("in the snow", "on the snow", "in a snowy landscape"),
    "night": ("at night", "in the night", "under the night sky"),
}
# Said before the objects: "a beach with a red car".
SCENE_OPENINGS: dict[str, tuple[str, ...]] = {
    "sky": ("a clear sky with",),
    "grass": ("a grassy field with", "a meadow with"),
    "beach": ("a beach with", "a sandy beach with"),
    "snow": ("a snowy landscape with", "a snowy field with"),
    "night": ("a night scene with", "a dark night with"),
}
PREFIXES: tuple[str, ...] = ("a photo of", "a picture of", "an image of", "a photograph of")
EXISTENTIALS: tuple[str, ...] = ("there is", "there are")
CONJUNCTION = "and"
COMMA = ","
MAX_CAPTION_TOKENS = 28  # words and commas; the grammar's longest caption has 23 (tested)

assert set(SIZE_PHRASES) == set(SIZES) and set(RELATION_PHRASES) == set(RELATIONS)
assert set(BACKGROUND_PHRASES) == set(BACKGROUNDS) == set(SCENE_OPENINGS)


@dataclass(frozen=True)
class ObjectTerm:
    """A noun phrase: `count` objects of `kind` (and `color`, `size` when said).

    `exact` is False for "a"/"an" (at least one) and True for number words ("two" means exactly
    two).
    """

    kind: str
    color: str | None = None
    count: int = 1
    exact: bool = False
    size: str | None = None


@dataclass(frozen=True)
class RelationTerm:
    """`objects[subject]` is `relation` `objects[object]` in a description."""

    subject: int
    relation: str
    object: int


@dataclass(frozen=True)
class SceneDescription:
    """What a caption or query says: noun phrases, relations between them, and the background."""

    objects: tuple[ObjectTerm, ...]
    relations: tuple[RelationTerm, ...] = ()
    background: str | None = None


def article_for(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def vocabulary() -> list[str]:
    """Every word (and the comma) the caption grammar can write, sorted: a word-level vocabulary."""
    words: set[str] = {CONJUNCTION, COMMA, *ARTICLES, *NUMBER_WORDS.values(), *COLORS, *KINDS}
    words.update(PLURALS.values())
    phrase_tables = [SIZE_PHRASES, RELATION_PHRASES, BACKGROUND_PHRASES, SCENE_OPENINGS]
    for table in phrase_tables:
        for phrases in table.values():
            for phrase in phrases:
                words.update(phrase.split())
    for phrase in (*PREFIXES, *EXISTENTIALS):
        words.update(phrase.split())
    return sorted(words)
