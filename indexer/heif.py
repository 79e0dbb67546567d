"""HEIC/HEIF support for Pillow, registered once per process.

Kept apart from `indexer.decode` (which loads torch) so that the app's Pillow-only modules can
open the HEIC photos the indexer catalogued without paying for torch.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_registered = False


def register_heif_opener() -> None:
    """Teach Pillow to open HEIC/HEIF files (AVIF is native in Pillow); safe to call many times."""
    global _registered
    with _lock:
        if _registered:
            return
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
        except ImportError:
            logger.warning("pillow-heif is missing; HEIC/HEIF photos can't be read")
        _registered = True
