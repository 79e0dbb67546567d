"""The search page's three modes (text, upload, more like this) and the detail page's way back
(streamlit.testing AppTest), and HEIC photos shown and uploaded in a fresh app process.

pillow-heif's Pillow plugin is process-wide and the indexer run by the fixture registers it in
this process, so only a clean interpreter tells whether the app registers it by itself.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.test_app_support import (
    AppLibrary,
    GridTile,
    build_library,
    parse_grid,
    tiny_model_folder,
)

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "search_app" / "app.py")
COUNT = 8  # generated photos, plus one HEIC
HEIC_FILE = "phone/phone.heic"


def _write_heic(path: Path) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    ramp = np.linspace(0, 255, 160, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (120, 1)), np.full((120, 160), 90, np.uint8)] * 2)[:3]
    path.parent.mkdir(parents=True)
    Image.fromarray(pixels.transpose(1, 2, 0)).save(path, format="HEIF")


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> AppLibrary:
    root = tmp_path_factory.mktemp("search_page")
    model = tiny_model_folder(root / "model")
    _write_heic(root / "library" / "photos" / HEIC_FILE)  # indexed with the generated photos
    return build_library(root / "library", COUNT, model)


def _app(
    monkeypatch: pytest.MonkeyPatch,
    library: AppLibrary,
    page: str | None = None,
    params: dict[str, str] | None = None,
) -> AppTest:
    for name, value in library.env().items():
        monkeypatch.setenv(name, value)
    app = AppTest.from_file(APP, default_timeout=120)
    for name, value in (params or {}).items():
        app.query_params[name] = value
    if page is not None:
        # Opened straight at `page`, as a link does: a first run of the search page would bind
        # its parameters, and Streamlit drops other pages' bound parameters on a page switch.
        app.switch_page(page)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def _tiles(app: AppTest) -> list[GridTile]:
    return [tile for block in app.html for tile in parse_grid(block.value)]


def _scores(app: AppTest) -> list[float]:
    return [float(tile.meta.split(" · ")[0].removeprefix("score ")) for tile in _tiles(app)]


def _dates(app: AppTest) -> list[str]:
    return [tile.meta.split(" · ")[1] for tile in _tiles(app)]


def _jpeg(library: AppLibrary) -> bytes:
    buffer = io.BytesIO()
    Image.open(library.photos / library.entries[0].file).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


def _image_id(library: AppLibrary, file: str) -> int:
    found = library.catalog().list_images(page_size=100).items
    return next(d.image.id for d in found if d.image.abs_path == library.photos / file)


def _middle_cutoff(scores: list[float]) -> float:
    """A slider value (0.01 steps) that keeps some of `scores` and drops the others."""
    cutoff = np.ceil(sorted(scores)[len(scores) // 2] * 100) / 100
    assert min(scores) < cutoff <= max(scores), scores  # the tiny model spreads them enough
    return float(cutoff)


def test_search_page_text_query_replaces_the_upload(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    app = _app(monkeypatch, library)
    app.file_uploader(key="upload").upload("mine.jpg", _jpeg(library), "image/jpeg").run()
    assert "photos like your upload" in app.caption[0].value
    app.text_input(key="q").input("a red car").run()
    assert not app.exception
    assert app.caption[0].value.startswith(f"{COUNT + 1} photos in "), app.caption[0].value
    assert app.file_uploader[0].value is None  # the upload is gone, not just ignored
    app.file_uploader[0].upload("again.jpg", _jpeg(library), "image/jpeg").run()
    assert "photos like your upload" in app.caption[0].value  # and a new one searches again


@pytest.mark.parametrize("mode", ["like", "upload"])
def test_search_page_min_score_applies_to_photo_searches(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary, mode: str
) -> None:
    like = _image_id(library, library.entries[1].file)
    app = _app(monkeypatch, library, params={"like": str(like)} if mode == "like" else None)
    if mode == "upload":
        app.file_uploader(key="upload").upload("mine.jpg", _jpeg(library), "image/jpeg").run()
    everything = _scores(app)
    cutoff = _middle_cutoff(everything)
    app.slider(key="min_score").set_value(cutoff).run()
    kept = _scores(app)
    assert kept and all(score >= cutoff for score in kept), (cutoff, kept)
    dropped = len(everything) - len(kept)
    assert dropped > 0 and f"{dropped} below the minimum score" in app.caption[0].value


@pytest.mark.parametrize("mode", ["like", "upload"])
def test_search_page_newest_first_applies_to_photo_searches(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary, mode: str
) -> None:
    like = _image_id(library, library.entries[1].file)
    app = _app(monkeypatch, library, params={"like": str(like)} if mode == "like" else None)
    if mode == "upload":
        app.file_uploader(key="upload").upload("mine.jpg", _jpeg(library), "image/jpeg").run()
    by_score = _dates(app)
    assert by_score != sorted(by_score, reverse=True)  # else the test would prove nothing
    app.toggle(key="sort_by_date").set_value(True).run()
    assert _dates(app) == sorted(by_score, reverse=True)


def test_search_page_reference_photo_has_alt_text_and_comes_back(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    like = _image_id(library, library.entries[2].file)
    app = _app(monkeypatch, library, params={"like": str(like), "k": "8"})
    shown = app.get("image")[0].proto
    assert shown.imgs[0].alt == library.catalog().get_image(like).caption.text
    link = urlsplit(shown.link)
    assert link.path == "./detail"
    back = {"from": ["search"], "back": [f"like={like}&k=8"]}
    assert parse_qs(link.query) == {"id": [str(like)], **back}


def test_search_page_result_links_lead_back_to_the_results(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    app = _app(monkeypatch, library, params={"q": "a red car", "k": "8"})
    links = [parse_qs(urlsplit(tile.links["Details"]).query) for tile in _tiles(app)]
    assert len(links) == 8
    for query in links:
        assert query["from"] == ["search"]
        assert parse_qs(query["back"][0]) == {"q": ["a red car"], "k": ["8"]}


def _page_links(app: AppTest) -> list[tuple[str, str, dict[str, list[str]]]]:
    """(page, label, query) of each st.page_link, in order."""
    links = [element.proto for element in app.get("page_link")]
    return [(link.page, link.label, parse_qs(link.query_string)) for link in links]


@pytest.mark.parametrize(
    ("params", "back", "like_keeps"),
    [
        ({}, ("search", "Back to search", {}), {}),
        (
            {"from": "search", "back": "q=a+red+car&k=8&min_score=0.3"},
            ("search", "Back to search", {"q": ["a red car"], "k": ["8"], "min_score": ["0.3"]}),
            {"q": ["a red car"], "k": ["8"], "min_score": ["0.3"]},
        ),
        (
            {"from": "browse", "back": "page_size=12&browse-page=2&browse-folder=snow"},
            (
                "browse",
                "Back to browse",
                {"page_size": ["12"], "browse-page": ["2"], "browse-folder": ["snow"]},
            ),
            {},
        ),
        ({"from": "../../etc", "back": "q=boat"}, ("search", "Back to search", {}), {}),
    ],
)
def test_detail_back_link_returns_to_the_linking_results(
    monkeypatch: pytest.MonkeyPatch,
    library: AppLibrary,
    params: dict[str, str],
    back: tuple[str, str, dict[str, list[str]]],
    like_keeps: dict[str, list[str]],
) -> None:
    shown = str(_image_id(library, library.entries[0].file))
    app = _app(monkeypatch, library, "pages/detail.py", {**params, "id": shown})
    assert not app.title  # the page's only title is "Photo not found"
    back_link, more_like_this = _page_links(app)
    assert back_link == back
    assert more_like_this == ("search", "More like this", {**like_keeps, "like": [shown]})
    # The similar photos' own detail links keep the same way back.
    similar = [tile.links["Details"] for tile in _tiles(app)]
    valid = bool(back[2])  # a way back is carried on; none, or a bogus one, is not
    expected = {"from": [params["from"]], "back": [params["back"]]} if valid else {}
    assert similar and all(
        {k: v for k, v in parse_qs(urlsplit(href).query).items() if k != "id"} == expected
        for href in similar
    ), similar


def test_detail_photo_has_alt_text(monkeypatch: pytest.MonkeyPatch, library: AppLibrary) -> None:
    shown = _image_id(library, library.entries[0].file)
    app = _app(monkeypatch, library, "pages/detail.py", {"id": str(shown)})
    (image,) = app.get("image")[0].proto.imgs
    assert image.alt == library.catalog().get_image(shown).caption.text


# Runs in a fresh interpreter: argv = app path, HEIC file, its catalog id.
_HEIC_IN_THE_APP = """
import re, sys
from pathlib import Path
from PIL import Image
from streamlit.testing.v1 import AppTest

app_path, heic, heic_id = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
assert "HEIF" not in Image.OPEN, "something registered the HEIF opener before the app ran"
app = AppTest.from_file(app_path, default_timeout=120).run()
app.file_uploader(key="upload").upload(heic.name, heic.read_bytes(), "image/heic").run()
assert not app.error, [e.value for e in app.error]
assert "photos like your upload" in app.caption[0].value, app.caption[0].value
grid = "".join(block.value for block in app.html)
first = re.search(r'data-id="([0-9]+)".*?</div></div>', grid)
assert first.group(1) == heic_id and "data:image/" in first.group(0), "HEIC tile has no thumbnail"
app.query_params["id"] = heic_id
app.switch_page("pages/detail.py").run()
assert not app.warning, [w.value for w in app.warning]
assert app.get("image") and app.get("image")[0].proto.imgs[0].url
"""


def test_app_heic_photo_shows_and_uploads_in_a_fresh_process(library: AppLibrary) -> None:
    heic = library.photos / HEIC_FILE
    env = {**os.environ, **library.env(), "PYTHONPATH": str(ROOT)}
    arguments = [APP, str(heic), str(_image_id(library, HEIC_FILE))]
    done = subprocess.run(
        [sys.executable, "-c", _HEIC_IN_THE_APP, *arguments],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
