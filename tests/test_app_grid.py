"""The photo grid's HTML: escaped text, links by integer id only, missing files shown as such."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from search_app.grid import Tile, grid_html, similar_href, tile_html
from search_app.thumbnails import RenderedImage
from tests.test_app_support import parse_grid

IMAGE = RenderedImage(b"\xff\xd8fake-jpeg", 4, 3, "image/jpeg")


def test_app_grid_shows_caption_score_date_and_path() -> None:
    tile = Tile(7, Path("/photos/beach/photo_1.jpg"), "a red car", 0.4567, "2024-01-02 03:04")
    (parsed,) = parse_grid(grid_html([tile], {7: IMAGE}, {}))
    assert (parsed.id, parsed.caption) == (7, "a red car")
    assert parsed.meta == "score 0.457 · 2024-01-02 03:04"
    assert (parsed.path, parsed.shown_path) == ("/photos/beach/photo_1.jpg", "beach/photo_1.jpg")
    assert parsed.image and parsed.links["Details"] == "./detail?id=7"
    assert parsed.links["More like this"] == "./?like=7"


def test_app_grid_escapes_captions_and_paths() -> None:
    hostile = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    markup = tile_html(Tile(1, Path(f"/p/{hostile}.jpg"), hostile), IMAGE, {})
    assert "<script>" not in markup and 'onerror="' not in markup
    (parsed,) = parse_grid(markup)
    assert parsed.caption == hostile  # shown as text, exactly


def test_app_grid_similar_link_keeps_page_params_but_not_ids() -> None:
    href = similar_href(12, {"q": "two cars & a <tree>", "k": "40", "id": "3", "like": "9"})
    link = urlsplit(href)
    assert link.path == "./"
    assert parse_qs(link.query) == {"q": ["two cars & a <tree>"], "k": ["40"], "like": ["12"]}


def test_app_grid_marks_missing_files_and_hides_similar_when_asked() -> None:
    markup = grid_html([Tile(3, Path("/gone.jpg"), None)], {3: None}, None)
    (parsed,) = parse_grid(markup)
    assert not parsed.image and "file missing" in markup
    assert parsed.caption == "(no caption yet)" and "More like this" not in parsed.links
