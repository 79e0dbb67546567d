"""The photo grid as one HTML block: thumbnails with caption, score and path, and their links.

One block instead of a handful of Streamlit elements per photo: the browser lays out a page of
results in a fraction of the time (see benchmarks/bench_app.py), which is most of the latency
a user feels after typing a query. Thumbnails travel inline as data URIs of images this app
rendered itself. Every text is HTML-escaped; links carry only integer ids and the page's own
query parameters. No streamlit here.

Links to the detail page carry where the user came from (`BackLink`): `from` names the page
(search or browse) and `back` holds that page's query string, url-encoded as one parameter so
it can never clash with the detail page's own parameters (`id`).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from search_app.thumbnails import RenderedImage

CAPTION_MISSING = "(no caption yet)"
LIKE_PARAM = "like"
FROM_PARAM = "from"  # on a detail link: the page its "Back" returns to
BACK_PARAM = "back"  # on a detail link: that page's query string, url-encoded
# The pages a detail link may lead back to, by `from` value: (URL path, page file for st.page_link).
BACK_PAGES = {"search": ("./", "pages/search.py"), "browse": ("./browse", "pages/browse.py")}
MAX_BACK_CHARS = 2000  # a query string longer than any the app writes is not ours: dropped
# Parameters of the detail page itself, never carried back (nor nested, hop after hop).
_NOT_CARRIED = ("id", FROM_PARAM, BACK_PARAM)

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


@dataclass(frozen=True)
class BackLink:
    """The results page a detail link came from: `page` (a BACK_PAGES name) and its query."""

    page: str
    query: str = ""  # url-encoded query string, without "?"

    @classmethod
    def of_page(cls, page: str, params: Sequence[tuple[str, str]]) -> BackLink:
        """The link back to `page` showing what `params` (its query parameters) select."""
        if page not in BACK_PAGES:
            raise ValueError(f"no way back to page {page!r}; expected one of {list(BACK_PAGES)}")
        return cls(page, urlencode([(k, v) for k, v in params if k not in _NOT_CARRIED]))

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> BackLink | None:
        """The `from`/`back` pair of a detail page's query, or None when absent or not ours."""
        page, query = params.get(FROM_PARAM, ""), params.get(BACK_PARAM, "")
        if page not in BACK_PAGES or len(query) > MAX_BACK_CHARS:
            return None
        return cls.of_page(page, parse_qsl(query, keep_blank_values=True))

    @property
    def params(self) -> list[tuple[str, str]]:
        """The page's query parameters, e.g. for st.page_link(page_file, query_params=...)."""
        return parse_qsl(self.query, keep_blank_values=True)

    @property
    def page_file(self) -> str:
        return BACK_PAGES[self.page][1]

    @property
    def href(self) -> str:
        path = BACK_PAGES[self.page][0]
        return f"{path}?{self.query}" if self.query else path

    def detail_params(self) -> dict[str, str]:
        """What a detail link adds to carry this way back."""
        return {FROM_PARAM: self.page, BACK_PARAM: self.query}


def detail_href(image_id: int, back: BackLink | None = None) -> str:
    """The detail page of a photo; with `back`, it can return to exactly those results."""
    # "./" resolves against the app's root from every page, under any server base path.
    href = f"./detail?id={int(image_id)}"
    return f"{href}&{urlencode(back.detail_params())}" if back is not None else href


def similar_href(image_id: int, params: Mapping[str, str]) -> str:
    """The search page searching by this photo, keeping the page's other query parameters."""
    kept = {k: v for k, v in params.items() if k not in (LIKE_PARAM, "id")}
    return "./?" + urlencode({**kept, LIKE_PARAM: str(int(image_id))})


def _thumbnail(tile: Tile, image: RenderedImage | None, back: BackLink | None) -> str:
    if image is None:
        inner = '<span class="coca-missing">file missing or unreadable</span>'
    else:
        data = base64.b64encode(image.data).decode("ascii")
        alt = html.escape(tile.caption or f"photo {tile.id}")
        inner = f'<img src="data:{image.mime};base64,{data}" alt="{alt}" loading="eager">'
    return f'<a class="coca-thumb" href="{html.escape(detail_href(tile.id, back))}">{inner}</a>'


def tile_html(
    tile: Tile,
    image: RenderedImage | None,
    similar_params: Mapping[str, str] | None,
    back: BackLink | None = None,
) -> str:
    facts = [f"score {tile.score:.3f}"] if tile.score is not None else []
    if tile.note:
        facts.append(tile.note)
    actions = [f'<a href="{html.escape(detail_href(tile.id, back))}">Details</a>']
    if similar_params is not None:
        actions.append(
            f'<a href="{html.escape(similar_href(tile.id, similar_params))}">More like this</a>'
        )
    parts = [
        f'<div class="coca-tile" data-id="{int(tile.id)}">',
        _thumbnail(tile, image, back),
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
    back: BackLink | None = None,
) -> str:
    """The whole grid; `similar_params` (the page's query parameters) adds "More like this",
    `back` makes the detail links lead back to the page the grid is on."""
    cells = "".join(tile_html(t, images.get(t.id), similar_params, back) for t in tiles)
    return f'<style>{GRID_CSS}</style><div class="coca-grid">{cells}</div>'
