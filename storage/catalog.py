"""The catalog's write side: what the indexer records (models, images, errors, model output).

Every method runs in its own transaction and takes or returns plain dataclasses (storage.records).
Reads for the app (browse, details, text search, stats) are in `storage.queries`, mixed in here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from sqlalchemy import String, case, delete, select, type_coerce, update

from storage import writes
from storage.db import Database
from storage.queries import CatalogQueries, image_record
from storage.records import (
    ImageMeta,
    ImageRecord,
    ImageResult,
    IndexedFile,
    KnownFile,
)
from storage.schema import Image, ImageStatus, Model

logger = logging.getLogger(__name__)


class Catalog(CatalogQueries):
    """Queries and updates on one catalog database (`storage.open_catalog` makes one)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- models ---------------------------------------------------------------------------------

    def get_or_create_model(self, source: str, config_hash: str, embed_dim: int) -> int:
        """The id of the model row for (source, config_hash), created when new."""
        with self.db.session(write=True) as session:
            found = session.execute(
                select(Model).where(Model.source == source, Model.config_hash == config_hash)
            ).scalar_one_or_none()
            if found is not None:
                if found.embed_dim != embed_dim:
                    raise ValueError(
                        f"model {source!r} ({config_hash}) is catalogued with embedding size "
                        f"{found.embed_dim}, not {embed_dim}: its config hash must change too"
                    )
                return found.id
            model = Model(
                source=source, config_hash=config_hash, embed_dim=embed_dim, created_at=writes.now()
            )
            session.add(model)
            session.flush()
            return model.id

    # -- images -----------------------------------------------------------------------------------

    def known_files(self, root: str) -> dict[str, KnownFile]:
        """Every catalogued file under `root`: relative path -> what the incremental diff needs."""
        # Plain columns, status as text, fetched in one go: ~100k rows must load well under 1 s.
        table = Image.__table__
        stmt = select(
            table.c.path,
            table.c.id,
            table.c.size,
            table.c.mtime_ns,
            table.c.content_hash,
            type_coerce(table.c.status, String),
        ).where(table.c.root == root)
        with self.db.session() as session:
            rows = session.connection().execute(stmt).all()  # Core rows: no ORM loading cost
        return {row[0]: KnownFile(*row[1:]) for row in rows}

    def find_by_hash(self, hashes: Iterable[str]) -> dict[str, list[ImageRecord]]:
        """Catalogued images per content hash (to recognise moved or renamed files)."""
        wanted = sorted(set(hashes))
        found: dict[str, list[ImageRecord]] = {}
        with self.db.session() as session:
            for part in writes.chunks(wanted):
                rows = session.execute(
                    select(Image).where(Image.content_hash.in_(part)).order_by(Image.id)
                ).scalars()
                for row in rows:
                    found.setdefault(row.content_hash, []).append(image_record(row))
        return found

    def upsert_images(self, metas: Sequence[ImageMeta]) -> list[int]:
        """Insert or update images by (root, path), status ok; ids in the order of `metas`.

        When a file's content hash changed, its embeddings and captions are dropped: they
        describe the old content, and the image now needs work again.
        """
        with self.db.session(write=True) as session:
            return writes.upsert_images(session, metas)

    def upsert_image(self, meta: ImageMeta) -> int:
        return self.upsert_images([meta])[0]

    def record_error(
        self,
        root: str,
        path: str,
        size: int,
        mtime_ns: int,
        message: str,
        content_hash: str | None = None,
    ) -> int:
        """Mark a file as failed (status error + message); returns its image id.

        Any embedding or caption it had is dropped. The file is retried when its size or
        mtime changes.
        """
        meta = ImageMeta(root=root, path=path, size=size, mtime_ns=mtime_ns, content_hash=None)
        with self.db.session(write=True) as session:
            image_id = writes.upsert_images(session, [meta])[0]
            session.execute(
                update(Image)
                .where(Image.id == image_id)
                .values(status=ImageStatus.ERROR, error=message, content_hash=content_hash)
            )
            return image_id

    def move_image(
        self, image_id: int, root: str, path: str, mtime_ns: int | None = None
    ) -> list[int]:
        """Give an image a new location, keeping its data (a moved or renamed file).

        A different row already at the new location describes a file that is gone: it is deleted
        and its id returned (remove it from the vector index too).
        """
        with self.db.session(write=True) as session:
            displaced = (
                session.execute(
                    select(Image.id).where(
                        Image.root == root, Image.path == path, Image.id != image_id
                    )
                )
                .scalars()
                .all()
            )
            if displaced:
                logger.info("move over %s/%s replaces catalog rows %s", root, path, displaced)
                session.execute(delete(Image).where(Image.id.in_(displaced)))
            values: dict = {"root": root, "path": path, "folder": writes.folder_of(path)}
            if mtime_ns is not None:
                values["mtime_ns"] = mtime_ns
            moved = session.execute(update(Image).where(Image.id == image_id).values(**values))
            if moved.rowcount == 0:
                raise KeyError(f"image {image_id} is not in the catalog")
            return [int(i) for i in displaced]

    def adopt_root(self, old_root: str, new_root: str, prefix: str) -> list[int]:
        """Re-key every row of `old_root`, a folder `prefix` ("album/") inside `new_root`, as
        part of `new_root`, keeping its data: the folder was indexed on its own before and is
        now indexed as part of the folder around it.

        A row `new_root` already has for the same file wins; the old root's duplicate is deleted
        and its id returned (remove it from the vector index too).
        """
        if not prefix.endswith("/") or prefix.startswith("/"):
            raise ValueError(f"prefix must be a relative folder ending in '/', got {prefix!r}")
        with self.db.session(write=True) as session:
            outer = select(Image.path).where(Image.root == new_root).scalar_subquery()
            displaced = [
                int(i)
                for i in session.execute(
                    select(Image.id).where(Image.root == old_root, (prefix + Image.path).in_(outer))
                ).scalars()
            ]
            if displaced:
                session.execute(delete(Image).where(Image.id.in_(displaced)))
            folder = case((Image.folder == "", prefix[:-1]), else_=prefix + Image.folder)
            session.execute(
                update(Image)
                .where(Image.root == old_root)
                .values(root=new_root, path=prefix + Image.path, folder=folder)
            )
        return displaced

    def delete_file(self, root: str, path: str) -> int | None:
        """Delete the row of the file at (root, path), if any; returns its id."""
        with self.db.session(write=True) as session:
            image_id = session.execute(
                select(Image.id).where(Image.root == root, Image.path == path)
            ).scalar()
            if image_id is not None:
                session.execute(delete(Image).where(Image.id == image_id))
        return None if image_id is None else int(image_id)

    def delete_images(self, image_ids: Iterable[int]) -> int:
        """Delete images with their captions and embeddings; returns how many rows went."""
        ids = sorted({int(i) for i in image_ids})
        deleted = 0
        with self.db.session(write=True) as session:
            for part in writes.chunks(ids):
                deleted += session.execute(delete(Image).where(Image.id.in_(part))).rowcount
        return deleted

    # -- model output ---------------------------------------------------------------------------

    def store_results(self, model_id: int, results: Sequence[ImageResult]) -> None:
        """Store embeddings (+ captions) for catalogued images in ONE transaction.

        An embedding or caption by the same model replaces the older one.
        """
        with self.db.session(write=True) as session:
            writes.store_output(
                session, model_id, [(r.image_id, r.embedding, r.caption) for r in results]
            )

    def store_indexed(self, model_id: int, files: Sequence[IndexedFile]) -> list[int]:
        """Upsert the files' metadata and store their model output in ONE transaction."""
        with self.db.session(write=True) as session:
            ids = writes.upsert_images(session, [f.meta for f in files])
            writes.store_output(
                session,
                model_id,
                [(i, f.embedding, f.caption) for i, f in zip(ids, files, strict=True)],
            )
            return ids
