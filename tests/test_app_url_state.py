"""What the URL keeps of Browse (and the shared filters): reload, Back and shared links show the
same photos. AppTest loads a URL as a fresh session; one real-browser test covers the round trip
through a photo's detail page and Back, which AppTest cannot (its URL ignores widget bindings).
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from datetime import date, datetime
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest
from streamlit.testing.v1 import AppTest

from search_app.grid import MAX_BACK_CHARS, BackLink, Tile, detail_href, grid_html
from search_app.search import DataLayout
from tests.test_app_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    AppLibrary,
    GridTile,
    build_library,
    parse_grid,
    tiny_model_folder,
)

APP = str(Path(__file__).resolve().parent.parent / "search_app" / "app.py")
COUNT = 30  # three browse pages of 12
OLD_DAY = date(1995, 5, 17)  # one photo is older than the date filter's former default start
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> AppLibrary:
    root = tmp_path_factory.mktemp("url_state")
    built = build_library(root, COUNT, tiny_model_folder(root / "model"))
    stored = datetime.combine(OLD_DAY, datetime.min.time()).isoformat(" ", "microseconds")
    with closing(sqlite3.connect(DataLayout(built.data).catalog_path)) as db, db:
        # The text form SQLAlchemy gives a DateTime on SQLite, so that comparisons hold.
        db.execute("UPDATE images SET photo_date = ? WHERE id = 1", (stored,))
    return built


def _browse(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary, params: dict[str, str] | None = None
) -> AppTest:
    """Browse as opened from a URL with `params`: a new session, like a reload or shared link."""
    for name, value in library.env().items():
        monkeypatch.setenv(name, value)
    app = AppTest.from_file(APP, default_timeout=120)
    app.run()
    for name, value in (params or {}).items():
        app.query_params[name] = value
    return _checked(app.switch_page("pages/browse.py").run())


def _checked(app: AppTest) -> AppTest:
    assert not app.exception, [e.value for e in app.exception]
    return app


def _tiles(app: AppTest) -> list[GridTile]:
    return [tile for block in app.html for tile in parse_grid(block.value)]


def _dates(library: AppLibrary) -> list[date]:
    return [d.image.photo_date.date() for d in library.catalog().list_images(page_size=999).items]


def _a_folder(library: AppLibrary) -> tuple[str, int]:
    """A library subfolder and how many photos it holds."""
    counts = {f.folder: f.images for f in library.catalog().folders() if f.folder}
    folder = max(counts, key=lambda f: (counts[f], f))
    return folder, counts[folder]


# -- folder -------------------------------------------------------------------------------------


def test_app_url_state_folder_is_kept_by_name_not_label(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    folder, count = _a_folder(library)
    app = _browse(monkeypatch, library)
    _checked(app.selectbox(key="browse-folder").set_value(folder).run())
    assert app.query_params["browse-folder"] == folder  # not "snow (8)": counts change
    reloaded = _browse(monkeypatch, library, {"browse-folder": folder})
    assert reloaded.selectbox(key="browse-folder").value == folder
    assert reloaded.caption[0].value.startswith(f"{count} photos")
    assert all(f"/{folder}/" in tile.path for tile in _tiles(reloaded))


def test_app_url_state_folder_link_with_an_old_count_still_filters(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    folder, count = _a_folder(library)
    app = _browse(monkeypatch, library, {"browse-folder": f"{folder} ({count + 5})"})
    assert app.selectbox(key="browse-folder").value == folder and not app.warning
    assert app.caption[0].value.startswith(f"{count} photos")
    assert app.query_params["browse-folder"] == folder


def test_app_url_state_unknown_folder_says_so(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    app = _browse(monkeypatch, library, {"browse-folder": "no-such-folder"})
    shown = app.warning[0].value.replace("\\", "")  # markdown escapes
    assert "“no-such-folder” of this link is not in the catalog" in shown
    assert app.caption[0].value.startswith(f"{COUNT} photos")
    assert "browse-folder" not in app.query_params


# -- dates --------------------------------------------------------------------------------------


def test_app_url_state_single_day_survives_reload(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    dates = _dates(library)
    day = sorted(dates)[COUNT // 2]
    app = _browse(monkeypatch, library)
    _checked(app.toggle(key="browse-use-dates").set_value(True).run())
    _checked(app.date_input(key="browse-dates").set_value((day, day)).run())
    assert app.caption[0].value.startswith(f"{dates.count(day)} photos")
    assert (app.query_params["browse-from"], app.query_params["browse-to"]) == (str(day),) * 2
    reloaded = _browse(monkeypatch, library, {**app.query_params, "browse-use-dates": "true"})
    assert reloaded.date_input(key="browse-dates").value == (day, day)
    assert reloaded.caption[0].value.startswith(f"{dates.count(day)} photos")


def test_app_url_state_start_day_alone_means_from_then_on(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    dates = _dates(library)
    start = sorted(dates)[COUNT // 2]
    later = sum(d >= start for d in dates)
    app = _browse(monkeypatch, library)
    _checked(app.toggle(key="browse-use-dates").set_value(True).run())
    _checked(app.date_input(key="browse-dates").set_value((start,)).run())
    assert app.caption[0].value.startswith(f"{later} photos")
    assert app.query_params["browse-from"] == str(start) and "browse-to" not in app.query_params
    params = {"browse-use-dates": "true", "browse-from": str(start)}
    reloaded = _browse(monkeypatch, library, params)
    assert reloaded.caption[0].value.startswith(f"{later} photos")


def test_app_url_state_older_date_links_still_filter(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    # Links written before: the widget's own `browse-dates`, one value for a single day.
    dates = _dates(library)
    day = sorted(dates)[COUNT // 2]
    app = _browse(monkeypatch, library, {"browse-use-dates": "true", "browse-dates": str(day)})
    assert app.caption[0].value.startswith(f"{dates.count(day)} photos")
    assert "browse-dates" not in app.query_params and app.query_params["browse-to"] == str(day)


def test_app_url_state_date_filter_starts_at_the_oldest_photo(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    app = _browse(monkeypatch, library)
    _checked(app.toggle(key="browse-use-dates").set_value(True).run())
    assert app.date_input(key="browse-dates").value[0] == OLD_DAY
    assert app.caption[0].value.startswith(f"{COUNT} photos")  # turning it on drops none


# -- page ---------------------------------------------------------------------------------------


def test_app_url_state_browse_page_comes_from_the_url(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    app = _browse(monkeypatch, library, {"page_size": "12", "browse-page": "3"})
    assert app.caption[0].value == f"{COUNT} photos · page 3 of 3"
    assert len(_tiles(app)) == COUNT - 24


def test_app_url_state_new_order_restarts_at_page_one(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    app = _browse(monkeypatch, library, {"page_size": "12", "browse-page": "2"})
    _checked(app.selectbox(key="order").set_value("path").run())
    assert app.caption[0].value == f"{COUNT} photos · page 1 of 3"


# -- the way back from a photo ------------------------------------------------------------------


def test_app_url_state_detail_links_carry_the_way_back(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    params = {"page_size": "12", "browse-page": "2", "browse-use-dates": "true"}
    params |= {"browse-from": str(OLD_DAY), "browse-to": "2100-01-01"}
    app = _browse(monkeypatch, library, params)
    tile = _tiles(app)[0]
    link = urlsplit(tile.links["Details"])
    query = {k: v[0] for k, v in parse_qs(link.query).items()}
    assert link.path == "./detail" and query["id"] == str(tile.id)
    assert query["from"] == "browse" and dict(parse_qsl(query["back"])) == params
    back = BackLink.from_params(query)
    assert back is not None and back.page_file == "pages/browse.py"
    assert dict(back.params) == params and back.href == "./browse?" + query["back"]
    # Opening the link back shows the same page of photos.
    again = _browse(monkeypatch, library, dict(back.params))
    assert [t.id for t in _tiles(again)] == [t.id for t in _tiles(app)]


def test_app_url_state_back_link_keeps_only_known_pages_and_own_params() -> None:
    back = BackLink.of_page("search", [("q", "a red car & <b>"), ("id", "3"), ("back", "x")])
    assert back.params == [("q", "a red car & <b>")] and back.href.startswith("./?q=")
    assert BackLink.from_params({"from": "admin", "back": "q=x"}) is None
    assert BackLink.from_params({"from": "browse", "back": "x" * (MAX_BACK_CHARS + 1)}) is None
    assert BackLink.from_params({"id": "3"}) is None
    with pytest.raises(ValueError, match="no way back"):
        BackLink.of_page("detail", [])
    href = detail_href(7, back)
    assert dict(parse_qsl(urlsplit(href).query)) == {
        "id": "7",
        "from": "search",
        "back": back.query,
    }
    markup = grid_html([Tile(7, Path("/p/a.jpg"), "a")], {7: None}, None, back)
    assert "&amp;from=search" in markup  # escaped in the attribute, exact once parsed
    assert parse_grid(markup)[0].links["Details"] == href
    assert detail_href(7) == "./detail?id=7"


# -- in a real browser: Back from a photo -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server_url(library: AppLibrary, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("url_state_serve") / "serve.log"
    command = [sys.executable, "-m", "coca_search", "serve", "--data", str(library.data)]
    command += ["--model", library.model, "--port", str(port), "--device", "cpu"]
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.3)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)


@pytest.mark.browser
def test_app_url_state_browser_back_from_a_photo_keeps_the_page(server_url: str) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server_url + "/browse?page_size=12")
            page.get_by_text(f"{COUNT} photos · page 1 of 3").wait_for(timeout=WAIT_MS)
            page.get_by_label("Page 3", exact=True).click()
            page.get_by_text("page 3 of 3").wait_for(timeout=WAIT_MS)
            page.locator(".coca-tile a", has_text="Details").first.click()
            page.wait_for_url("**/detail?id=*", timeout=WAIT_MS)
            detail_url = page.url
            page.go_back()
            page.get_by_text(f"{COUNT} photos · page 3 of 3").wait_for(timeout=WAIT_MS)
            page.reload()
            page.get_by_text(f"{COUNT} photos · page 3 of 3").wait_for(timeout=WAIT_MS)
        finally:
            browser.close()
    # The detail page was told the way back to that page.
    back = BackLink.from_params(dict(parse_qsl(urlsplit(detail_url).query)))
    assert back is not None and back.href == "./browse?browse-page=3&page_size=12"
