"""Read captions and queries back into a `SceneDescription` with the phrase tables of `language`.

The grammar: [opening | prefix | "there is/are"] clause ("," clause)* ["and" clause] [background],
where a clause is a noun phrase optionally followed by a relation and a second noun phrase, and a
noun phrase is [a | an | one | two | three] [size] [color] kind. Queries use the same grammar;
colors may be left out.
"""

from __future__ import annotations

import re

from coca.world.language import (
    ARTICLES,
    BACKGROUND_PHRASES,
    COMMA,
    CONJUNCTION,
    EXISTENTIALS,
    NUMBER_WORDS,
    PLURALS,
    PREFIXES,
    RELATION_PHRASES,
    SCENE_OPENINGS,
    SIZE_PHRASES,
    ObjectTerm,
    RelationTerm,
    SceneDescription,
)
from coca.world.scene import COLORS, KINDS

Tokens = tuple[str, ...]


def _phrase_table(table: dict[str, tuple[str, ...]]) -> list[tuple[Tokens, str]]:
    """(tokens, meaning) pairs, longest first so 'to the left of' wins over 'left of'."""
    pairs = [(tuple(p.split()), meaning) for meaning, phrases in table.items() for p in phrases]
    return sorted(pairs, key=lambda pair: -len(pair[0]))


_OPENINGS = _phrase_table(SCENE_OPENINGS)
_BACKGROUNDS = _phrase_table(BACKGROUND_PHRASES)
_RELATIONS = _phrase_table(RELATION_PHRASES)
_PREFIXES = sorted((tuple(p.split()) for p in (*PREFIXES, *EXISTENTIALS)), key=lambda t: -len(t))
_SIZE_WORDS = {word: size for size, words in SIZE_PHRASES.items() for word in words}
_KIND_WORDS = {**{kind: kind for kind in KINDS}, **{plural: k for k, plural in PLURALS.items()}}
_NUMBERS = {word: count for count, word in NUMBER_WORDS.items()}


def tokenize(text: str) -> Tokens:
    """Lowercase words and commas; a final period or question mark is ignored."""
    text = text.lower().strip().rstrip(".!?")
    return tuple(re.findall(r"[a-z]+|,", text))


def _strip_start(tokens: Tokens) -> tuple[Tokens, str | None]:
    """Remove an opening ('a beach with') or prefix ('a photo of'); return its background if any."""
    for phrase, background in _OPENINGS:
        if tokens[: len(phrase)] == phrase:
            return tokens[len(phrase) :], background
    for phrase in _PREFIXES:
        if tokens[: len(phrase)] == phrase:
            return tokens[len(phrase) :], None
    return tokens, None


def _strip_background(tokens: Tokens) -> tuple[Tokens, str | None]:
    for phrase, background in _BACKGROUNDS:
        if len(tokens) > len(phrase) and tokens[-len(phrase) :] == phrase:
            return tokens[: -len(phrase)], background
    return tokens, None


def _split_clauses(tokens: Tokens) -> list[Tokens] | None:
    clauses: list[Tokens] = []
    current: list[str] = []
    for token in tokens:
        if token in (COMMA, CONJUNCTION):
            if not current:
                return None
            clauses.append(tuple(current))
            current = []
        else:
            current.append(token)
    if not current:
        return None
    return [*clauses, tuple(current)]


def parse_noun_phrase(tokens: Tokens) -> ObjectTerm | None:
    """'two red cars' -> ObjectTerm('car', 'red', 2, exact=True); None for other text."""
    words = list(tokens)
    if not words or words[-1] not in _KIND_WORDS:
        return None
    kind = _KIND_WORDS[words.pop()]
    count, exact = 1, False
    if words and words[0] in _NUMBERS:
        count, exact = _NUMBERS[words.pop(0)], True
    elif words and words[0] in ARTICLES:
        words.pop(0)
    size = _SIZE_WORDS.get(words[0]) if words else None
    if size is not None:
        words.pop(0)
    color = words.pop(0) if words and words[0] in COLORS else None
    if words:
        return None
    return ObjectTerm(kind=kind, color=color, count=count, exact=exact, size=size)


def _find_relation(tokens: Tokens) -> tuple[int, int, str] | None:
    """(start, end, relation) of the leftmost, longest relation phrase in a clause."""
    for start in range(len(tokens)):
        for phrase, relation in _RELATIONS:
            if tokens[start : start + len(phrase)] == phrase:
                return start, start + len(phrase), relation
    return None


def _parse_clause(tokens: Tokens, terms: list[ObjectTerm], relations: list[RelationTerm]) -> bool:
    found = _find_relation(tokens)
    pieces = [tokens] if found is None else [tokens[: found[0]], tokens[found[1] :]]
    parsed = [parse_noun_phrase(piece) for piece in pieces]
    if any(term is None for term in parsed):
        return False
    if found is not None:
        relations.append(RelationTerm(len(terms), found[2], len(terms) + 1))
    terms.extend(term for term in parsed if term is not None)
    return True


def parse_description(text: str) -> SceneDescription | None:
    """Parse a caption or query of the grammar; None when the text is outside it."""
    tokens, opening = _strip_start(tokenize(text))
    tokens, background = _strip_background(tokens)
    if opening is not None and background is not None and opening != background:
        return None
    clauses = _split_clauses(tokens)
    if clauses is None:
        return None
    terms: list[ObjectTerm] = []
    relations: list[RelationTerm] = []
    for clause in clauses:
        if not _parse_clause(clause, terms, relations):
            return None
    return SceneDescription(tuple(terms), tuple(relations), opening or background)


def parse_caption(text: str) -> SceneDescription | None:
    """A caption (from the grammar or from a model) as a description; None if it does not parse."""
    return parse_description(text)
