"""SQL conditions for `ImageFilter` (folder prefix, date range, status), shared by every query."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from pathlib import PurePosixPath

from sqlalchemy import ColumnElement, and_, false, or_

from storage.records import ImageFilter
from storage.schema import Image, ImageStatus


def under_folder(folder: str) -> ColumnElement[bool]:
    """`Image.folder` is `folder` or below it, as a range so the (root, folder) index serves it."""
    folder = folder.strip("/")
    if not folder:
        return Image.folder.is_not(None)
    # "/" sorts just before "0": every "folder/..." lies in ["folder/", "folder0").
    return or_(
        Image.folder == folder, and_(Image.folder >= folder + "/", Image.folder < folder + "0")
    )


def _absolute_folder(folder: str, roots: Sequence[str]) -> ColumnElement[bool]:
    target = PurePosixPath(folder)
    clauses: list[ColumnElement[bool]] = []
    for root in roots:
        root_path = PurePosixPath(root)
        if target == root_path:
            clauses.append(Image.root == root)  # the library root itself: all of its photos
        elif root_path in target.parents:
            clauses.append(
                and_(Image.root == root, under_folder(str(target.relative_to(root_path))))
            )
        elif target in root_path.parents:
            clauses.append(Image.root == root)  # the whole library root lies under the folder
    return or_(*clauses) if clauses else false()


def _as_start(value: date | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.combine(value, time.min)


def _as_end(value: date | datetime) -> datetime:
    # A plain date includes its whole day; a datetime is an exclusive upper bound.
    return (
        value if isinstance(value, datetime) else datetime.combine(value + timedelta(1), time.min)
    )


def filter_conditions(spec: ImageFilter | None, roots: Sequence[str]) -> list[ColumnElement[bool]]:
    """WHERE conditions on `Image` for `spec`; `roots` are the catalog's library roots."""
    if spec is None:
        return []
    conditions: list[ColumnElement[bool]] = []
    if spec.status is not None:
        conditions.append(Image.status == ImageStatus(spec.status))
    if spec.root:
        conditions.append(Image.root == spec.root)
    if spec.folder:
        if spec.folder.startswith("/") and spec.root is None:
            conditions.append(_absolute_folder(spec.folder, roots))
        else:
            conditions.append(under_folder(spec.folder))
    if spec.date_from is not None:
        conditions.append(Image.photo_date >= _as_start(spec.date_from))
    if spec.date_to is not None:
        conditions.append(Image.photo_date < _as_end(spec.date_to))
    return conditions
