"""Caption full-text search: FTS5 with bm25 ranking on SQLite, a LIKE fallback elsewhere.

User text never reaches FTS5's query syntax: it is cut into word tokens and each token is quoted,
so input such as `"`, `AND (` or `*:^` can't raise a syntax error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    and_,
    case,
    column,
    literal_column,
    or_,
    select,
    table,
)
from sqlalchemy.orm import Session

from storage.records import TextHit
from storage.schema import Caption, Image

_TOKEN = re.compile(r"\w+", re.UNICODE)
MAX_TOKENS = 32
# Not in the ORM metadata: created by migration 2 on SQLite only.
_fts = table("captions_fts", column("rowid", Integer))


def query_tokens(text: str) -> list[str]:
    """The word tokens of a user query (lower-cased, at most MAX_TOKENS)."""
    return [token.lower() for token in _TOKEN.findall(text)][:MAX_TOKENS]


def fts5_expression(tokens: Sequence[str], match_all: bool) -> str:
    """An FTS5 MATCH expression where every token is a quoted string (no operators from input)."""
    quoted = ['"' + token.replace('"', '""') + '"' for token in tokens]
    return (" AND " if match_all else " OR ").join(quoted)


def _fts5_select(tokens: Sequence[str], match_all: bool) -> Select:
    rank = literal_column("bm25(captions_fts)")
    return (
        select(Caption.image_id, (-rank).label("score"))
        .select_from(_fts)
        .join(Caption, Caption.id == _fts.c.rowid)
        .where(literal_column("captions_fts").op("MATCH")(fts5_expression(tokens, match_all)))
        .order_by(rank, Caption.image_id)
    )


def _like_select(tokens: Sequence[str], match_all: bool) -> Select:
    def contains(token: str) -> ColumnElement[bool]:
        escaped = token.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return Caption.text.ilike(f"%{escaped}%", escape="\\")

    matches = [contains(token) for token in tokens]
    score = sum((case((m, 1), else_=0) for m in matches), literal_column("0", Integer))
    combined = and_(*matches) if match_all else or_(*matches)
    return (
        select(Caption.image_id, score.label("score"))
        .where(combined)
        .order_by(score.desc(), Caption.image_id)
    )


def uses_fts5(session: Session) -> bool:
    """Whether the catalog has the FTS5 table (SQLite); other backends use LIKE."""
    return session.get_bind().dialect.name == "sqlite"


def search_captions(
    session: Session,
    query: str,
    model_id: int,
    conditions: Sequence[ColumnElement[bool]],
    limit: int,
    match_all: bool,
) -> list[TextHit]:
    """Images whose caption (by `model_id`) matches `query`, best first."""
    tokens = query_tokens(query)
    if not tokens or limit <= 0:
        return []
    if uses_fts5(session):
        stmt = _fts5_select(tokens, match_all)
    else:
        stmt = _like_select(tokens, match_all)
    stmt = stmt.join(Image, Image.id == Caption.image_id).where(
        Caption.model_id == model_id, *conditions
    )
    rows = session.execute(stmt.limit(limit)).all()
    return [TextHit(image_id=int(row[0]), score=float(row[1])) for row in rows]
