"""Hard negative texts (NegCLIP-style): a minimal edit of a true text that makes it false.

"a red circle left of a green square" -> "a red circle right of a green square" (relation),
"a green square left of a red circle" (subject and object), "a green circle left of a red square"
(colors). A text tower trained only against other scenes' texts can treat a sentence as a bag of
words and still win; one that must rank an image's own text above the same words rearranged has to
read who is where and which color goes with which thing. Every edit is parsed back and checked
against the scene graph (`coca.world.description_matches`): an edit that is still true (two
squares on both sides of a circle) is dropped, so no negative ever says something true.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from coca.world.language import (
    ARTICLES,
    BACKGROUND_PHRASES,
    COMMA,
    CONJUNCTION,
    EXISTENTIALS,
    NUMBER_WORDS,
    PREFIXES,
    RELATION_PHRASES,
    SCENE_OPENINGS,
    article_for,
)
from coca.world.parse import parse_description, tokenize
from coca.world.queries import description_matches
from coca.world.scene import COLORS, Scene

Words = tuple[str, ...]

# Word for word, a relation phrase turned into its inverse ("to the left of" -> "to the right of").
_INVERSE_WORD = {
    "left": "right",
    "right": "left",
    "above": "below",
    "below": "above",
    "over": "under",
    "under": "over",
    "beneath": "above",
}


def _phrases(*groups: tuple[str, ...]) -> list[Words]:
    """Token sequences of phrases, longest first (so 'to the left of' wins over 'left of')."""
    return sorted({tuple(p.split()) for group in groups for p in group}, key=lambda t: -len(t))


_HEADS = _phrases(*SCENE_OPENINGS.values(), PREFIXES, EXISTENTIALS)
_TAILS = _phrases(*BACKGROUND_PHRASES.values())
_RELATION_WORDS = _phrases(*RELATION_PHRASES.values())
_PLURAL_NUMBERS = {word for count, word in NUMBER_WORDS.items() if count > 1}


@dataclass(frozen=True)
class Clause:
    """One clause of a text: a noun phrase, optionally a relation phrase and a second one."""

    subject: Words
    relation: Words = ()
    object: Words = ()


@dataclass(frozen=True)
class TextParts:
    """A grammar text cut into its opening ("a photo of"), clauses, and background phrase."""

    head: Words
    clauses: tuple[Clause, ...]
    tail: Words

    def text(self) -> str:
        """Back to a sentence, written the way the caption grammar writes it."""
        head = self.head
        if head in {tuple(e.split()) for e in EXISTENTIALS}:  # "there is" / "there are" agrees
            head = ("there", "are" if self.clauses[0].subject[0] in _PLURAL_NUMBERS else "is")
        said = [" ".join((*c.subject, *c.relation, *c.object)) for c in self.clauses]
        body = said[0] if len(said) == 1 else ", ".join(said[:-1]) + f" {CONJUNCTION} " + said[-1]
        return " ".join(part for part in (" ".join(head), body, " ".join(self.tail)) if part)


def _strip(words: Words, phrases: list[Words], at_end: bool) -> tuple[Words, Words]:
    """(the matched phrase, the rest) for the first phrase found at the start (or end)."""
    for phrase in phrases:
        n = len(phrase)
        if len(words) > n and (words[-n:] if at_end else words[:n]) == phrase:
            return phrase, words[:-n] if at_end else words[n:]
    return (), words


def _clause(words: Words) -> Clause | None:
    for start in range(1, len(words)):
        for phrase in _RELATION_WORDS:
            if words[start : start + len(phrase)] == phrase:
                end = start + len(phrase)
                return Clause(words[:start], phrase, words[end:]) if end < len(words) else None
    return Clause(words) if words else None


def split_text(text: str) -> TextParts | None:
    """Cut a grammar text into parts; None when its shape is outside the grammar."""
    head, words = _strip(tokenize(text), _HEADS, at_end=False)
    tail, words = _strip(words, _TAILS, at_end=True)
    pieces: list[list[str]] = [[]]
    for word in words:
        if word in (COMMA, CONJUNCTION):
            pieces.append([])
        else:
            pieces[-1].append(word)
    clauses = [_clause(tuple(piece)) for piece in pieces]
    if any(clause is None for clause in clauses):
        return None
    return TextParts(head, tuple(c for c in clauses if c is not None), tail)


def _with_clause(parts: TextParts, index: int, clause: Clause) -> TextParts:
    clauses = list(parts.clauses)
    clauses[index] = clause
    return TextParts(parts.head, tuple(clauses), parts.tail)


def _recolored(phrase: Words, color: str) -> Words:
    """The noun phrase with its color word replaced; "a" / "an" follows the new color."""
    words = [color if word in COLORS else word for word in phrase]
    if len(words) > 1 and words[0] in ARTICLES and words[1] == color:
        words[0] = article_for(color)
    return tuple(words)


def _color_of(phrase: Words) -> str | None:
    return next((word for word in phrase if word in COLORS), None)


def _relation_edits(parts: TextParts) -> list[TextParts]:
    """Each relation inverted, and each relation's subject and object swapped."""
    edits = []
    for index, clause in enumerate(parts.clauses):
        if not clause.relation:
            continue
        inverse = tuple(_INVERSE_WORD.get(word, word) for word in clause.relation)
        edits.append(_with_clause(parts, index, Clause(clause.subject, inverse, clause.object)))
        swapped = Clause(clause.object, clause.relation, clause.subject)
        edits.append(_with_clause(parts, index, swapped))
    return edits


def _color_edits(parts: TextParts) -> list[TextParts]:
    """Each pair of noun phrases with different colors, their colors exchanged (binding)."""
    slots = [(i, name) for i, c in enumerate(parts.clauses) for name in ("subject", "object")]
    phrases = [getattr(parts.clauses[i], name) for i, name in slots]
    edits = []
    for a in range(len(slots)):
        for b in range(a + 1, len(slots)):
            color_a, color_b = _color_of(phrases[a]), _color_of(phrases[b])
            if color_a is None or color_b is None or color_a == color_b:
                continue
            clauses = list(parts.clauses)
            for (i, name), color in ((slots[a], color_b), (slots[b], color_a)):
                phrase = getattr(clauses[i], name)
                fields = {"subject": clauses[i].subject, "object": clauses[i].object}
                fields[name] = _recolored(phrase, color)
                clauses[i] = Clause(fields["subject"], clauses[i].relation, fields["object"])
            edits.append(TextParts(parts.head, tuple(clauses), parts.tail))
    return edits


def candidate_negatives(text: str) -> list[str]:
    """Every minimal edit of `text` (relation, subject/object, colors); not yet checked."""
    parts = split_text(text)
    if parts is None:
        return []
    edits = [edit.text() for edit in (*_relation_edits(parts), *_color_edits(parts))]
    return list(dict.fromkeys(edit for edit in edits if edit != text))


def is_false_of(text: str, scene: Scene) -> bool:
    """Whether `text` parses with the grammar and the scene graph contradicts it."""
    description = parse_description(text)
    return description is not None and not description_matches(description, scene)


def hard_negative(text: str, scene: Scene, rng: np.random.Generator) -> str | None:
    """One edit of `text` that is false of `scene`, drawn uniformly among such edits; None when
    no edit is false (a text without a relation or two colors, or a symmetric scene)."""
    candidates = candidate_negatives(text)
    for i in rng.permutation(len(candidates)):
        # Shuffled, first false one: uniform over the false edits, with few parses on average.
        if is_false_of(candidates[int(i)], scene):
            return candidates[int(i)]
    return None


def negatives_for(texts: list[str], scene: Scene, rng: np.random.Generator) -> list[str | None]:
    """One hard negative per text of a scene (None where it has none), for the pool."""
    return [hard_negative(text, scene, rng) for text in texts]


# --- per training step -----------------------------------------------------------------------


def choose_negative_rows(
    valid: torch.Tensor, slots: int, generator: torch.Generator
) -> torch.Tensor:
    """(slots,) batch rows whose negatives a step uses: rows with a valid negative first, in a
    random order; when fewer rows have one, the rest are invalid rows (masked in the loss).

    A fixed number of slots keeps every step's shapes the same (no host sync, compile-friendly).
    """
    score = torch.rand(valid.shape[0], generator=generator) + (~valid).float()  # (B,)
    return score.argsort()[:slots]


def negative_allowed(
    rows: torch.Tensor,
    picked: torch.Tensor,
    picked_valid: torch.Tensor,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, M) which image may see which negative text as a negative.

    rows (B,) pool index per batch row, picked (M,) batch rows lending their negatives,
    picked_valid (M,), flip (B,) mirrored rows (None without mirroring). A negative is false of
    its own scene and of that scene mirrored together with its text; but the mirror image of its
    scene (a mirrored twin, or the same scene drawn twice with opposite flips) sees it with
    "left" and "right" the other way round, where it may be true: masked there.
    """
    allowed = picked_valid.view(1, -1).expand(rows.shape[0], -1)  # (B, M)
    if flip is None:
        return allowed
    same_scene = rows.view(-1, 1) == rows[picked].view(1, -1)  # (B, M)
    other_side = flip.view(-1, 1) != flip[picked].view(1, -1)  # (B, M)
    return allowed & ~(same_scene & other_side)
