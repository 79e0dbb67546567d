"""The search errors: each message tells the user what to do."""

from __future__ import annotations


class SearchError(ValueError):
    """A search that cannot run; the message tells the user what to do."""


class EmptyCatalogError(SearchError):
    """Nothing has been indexed yet."""


class ModelMismatchError(SearchError):
    """The catalog's embeddings were made by another model than the one loaded."""


class BadQueryError(SearchError):
    """An empty or overlong query, or an unreadable image."""
