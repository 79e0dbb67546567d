"""The photo grid as one HTML block: thumbnails with caption, score and path, and their links.

One block instead of a handful of Streamlit elements per photo: the browser lays out a page of
results in a fraction of the time (see benchmarks/bench_app.py), which is most of the latency
a user feels after typing a query. Thumbnails travel inline as data URIs of images this app
rendered itself. Every text is HTML-escaped; links carry only integer ids and the page's own
query parameters. No streamlit here.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from search_app.thumbnails import RenderedImage

CAPTION_MISSING = "(no caption yet)"
LIKE_PARAM = "like"

# Colors are translucent greys so the grid reads well on light and dark themes alike.
GRID_CSS = """
.coca-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr));
  gap: 1rem; margin: 0.25rem 0 1rem; }
.coca-tile { border: 1px solid rgba(128, 128, 128, 0.28); border-radius: 0.6rem;
  padding: 0.75rem; display: flex; flex-direction: column; gap: 0.3rem; min-width: 0; }
.coca-thumb { display: block; aspect-ratio: 4 / 3; border-radius: 0.4rem; overflow: hidden;
  background: rgba(128, 128, 128, 0.12); }
.coca-thumb img { width: 100%; height: 100%; object-fit: cover; display: block; }
.coca-missing { display: flex; height: 100%; align-items: center; justify-content: center;
  font-size: 0.8rem; opacity: 0.7; }
.coca-caption { font-weight: 600; line-height: 1.3; margin-top: 0.25rem; }
.coca-meta, .coca-path { font-size: 0.8rem; opacity: 0.65; overflow-wrap: anywhere; }
.coca-actions { display: flex; gap: 1rem; margin-top: auto; padding-top: 0.3rem;
  font-size: 0.85rem; }
.coca-actions a { text-decoration: none; }
.coca-actions a:hover { text-decoration: underline; }
"""


@dataclass(frozen=True)
class Tile:
    """What one grid cell shows; built from a search result or a browse row."""

    id: int
    path: Path  # the catalogued file of this id
    caption: str | None
    score: float | None = None
    note: str | None = None  # e.g. the photo's date


def short_path(path: Path) -> str:
    """The file's folder and name: enough to recognise it in a tile (the tooltip has it all)."""
    return "/".join(path.parts[-2:]) if len(path.parts) > 2 else str(path)


def detail_href(image_id: int) -> str:
    # "./" resolves against the app's root from every page, under any server base path.
    return f"./detail?id={int(image_id)}"


def similar_href(image_id: int, params: Mapping[str, str]) -> str:
    """The search page searching by this photo, keeping the page's other query parameters."""
    kept = {k: v for k, v in params.items() if k not in (LIKE_PARAM, "id")}
    return "./?" + urlencode({**kept, LIKE_PARAM: str(int(image_id))})


def _thumbnail(tile: Tile, image: RenderedImage | None) -> str:
    if image is None:
        inner = '<span class="coca-missing">file missing or unreadable</span>'
    else:
        data = base64.b64encode(image.data).decode("ascii")
        alt = html.escape(tile.caption or f"photo {tile.id}")
        inner = f'<img src="data:{image.mime};base64,{data}" alt="{alt}" loading="eager">'
    return f'<a class="coca-thumb" href="{detail_href(tile.id)}">{inner}</a>'


def tile_html(
    tile: Tile, image: RenderedImage | None, similar_params: Mapping[str, str] | None
) -> str:
    facts = [f"score {tile.score:.3f}"] if tile.score is not None else []
    if tile.note:
        facts.append(tile.note)
    actions = [f'<a href="{detail_href(tile.id)}">Details</a>']
    if similar_params is not None:
        actions.append(
            f'<a href="{html.escape(similar_href(tile.id, similar_params))}">More like this</a>'
        )
    parts = [
        f'<div class="coca-tile" data-id="{int(tile.id)}">',
        _thumbnail(tile, image),
        f'<div class="coca-caption">{html.escape(tile.caption or CAPTION_MISSING)}</div>',
        f'<div class="coca-meta">{html.escape(" · ".join(facts))}</div>' if facts else "",
        f'<div class="coca-path" title="{html.escape(str(tile.path))}">'
        f"{html.escape(short_path(tile.path))}</div>",
        f'<div class="coca-actions">{"".join(actions)}</div>',
        "</div>",
    ]
    return "".join(parts)


def grid_html(
    tiles: Sequence[Tile],
    images: Mapping[int, RenderedImage | None],
    similar_params: Mapping[str, str] | None = None,
) -> str:
    """The whole grid; `similar_params` (the page's query parameters) adds "More like this"."""
    cells = "".join(tile_html(t, images.get(t.id), similar_params) for t in tiles)
    return f'<style>{GRID_CSS}</style><div class="coca-grid">{cells}</div>'
