"""Page logic of the Streamlit app (streamlit.testing AppTest): states, filters, pagination, ids."""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

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

APP = str(Path(__file__).resolve().parent.parent / "search_app" / "app.py")
COUNT = 14  # more than one browse page of 12


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("app_models")
    return tiny_model_folder(root / "a", seed=0), tiny_model_folder(root / "b", seed=1)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, models: tuple[str, str]) -> AppLibrary:
    return build_library(tmp_path_factory.mktemp("app_library"), COUNT, models[0])


def _app(
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    page: str | None = None,
    params: dict[str, str] | None = None,
) -> AppTest:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app = AppTest.from_file(APP, default_timeout=120)
    for name, value in (params or {}).items():
        app.query_params[name] = value
    app.run()
    if page is not None:
        app.switch_page(page).run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def _search(app: AppTest, query: str) -> AppTest:
    app.text_input(key="q").input(query).run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def _tiles(app: AppTest) -> list[GridTile]:
    """The photo grid's tiles on the current page, in order."""
    return [tile for block in app.html for tile in parse_grid(block.value)]


def _result_paths(app: AppTest) -> list[str]:
    return [tile.path for tile in _tiles(app)]


def test_app_search_empty_data_folder_explains_how_to_index(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, models: tuple[str, str]
) -> None:
    env = AppLibrary(tmp_path / "photos", tmp_path / "data", models[0]).env()
    app = _app(monkeypatch, env)
    assert "coca-search index" in app.info[0].value
    assert not (tmp_path / "data" / "catalog.db").exists()  # the app never creates a catalog


def test_app_search_and_browse_of_an_empty_catalog_say_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, models: tuple[str, str]
) -> None:
    empty = AppLibrary(tmp_path / "photos", tmp_path / "data", models[0])
    empty.catalog().db.dispose()  # creates the schema, no photos
    app = _app(monkeypatch, empty.env())
    assert "catalog is empty" in app.warning[0].value
    app.switch_page("pages/browse.py").run()
    assert "No photos in the catalog yet" in app.info[0].value


def test_app_without_a_loadable_model_still_browses(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary, tmp_path: Path
) -> None:
    env = library.env(model=str(tmp_path / "no_such_model"))
    app = _app(monkeypatch, env)
    assert "could not be loaded" in app.error[0].value and "--model" in app.error[0].value
    app.switch_page("pages/browse.py").run()
    assert len(_result_paths(app)) == COUNT
    app.query_params["id"] = str(library.catalog().list_images(page_size=1).items[0].image.id)
    app.switch_page("pages/detail.py").run()
    assert not app.exception and "Similar photos are unavailable" in app.info[0].value


def test_app_search_model_mismatch_is_a_clear_warning(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary, models: tuple[str, str]
) -> None:
    app = _app(monkeypatch, library.env(model=models[1]))
    assert "another model" in app.warning[0].value
    assert not app.text_input  # no search box that could only fail


def test_app_search_text_shows_captions_scores_and_latency(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    app = _search(_app(monkeypatch, library.env()), "a red car")
    assert app.caption[0].value.startswith(f"{COUNT} photos in ")
    assert " ms" in app.caption[0].value
    paths = _result_paths(app)
    assert len(paths) == COUNT
    assert {Path(p).relative_to(library.photos).as_posix() for p in paths} == {
        e.file for e in library.entries
    }
    catalog = library.catalog()
    for tile in _tiles(app):
        detail = catalog.get_image(tile.id)
        assert tile.caption == detail.caption.text and tile.image
        assert tile.path == str(detail.image.abs_path)
        assert tile.shown_path == "/".join(detail.image.abs_path.parts[-2:])
        assert tile.meta.startswith("score ")
        assert tile.links["Details"] == f"./detail?id={tile.id}"


def test_app_search_result_count_is_selectable(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    app = _app(monkeypatch, library.env())
    app.select_slider(key="k").set_value(8).run()
    assert len(_result_paths(_search(app, "a blue boat"))) == 8


def test_app_search_bad_query_shows_error(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    app = _search(_app(monkeypatch, library.env()), "car " * 200)
    assert "characters" in app.error[0].value
    assert not _result_paths(app)


def test_app_search_min_score_cutoff_gives_no_results_state(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    app = _app(monkeypatch, library.env())
    app.slider(key="min_score").set_value(1.0).run()
    app = _search(app, "a red car")
    assert "No photos match" in app.info[0].value
    assert "below the minimum score" in app.caption[0].value


def test_app_search_folder_filter_restricts_results(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    folder = next(e.file.split("/")[0] for e in library.entries if "/" in e.file)
    expected = sum(e.file.startswith(folder + "/") for e in library.entries)
    app = _app(monkeypatch, library.env())
    app.selectbox(key="search-folder").set_value(folder).run()
    paths = _result_paths(_search(app, "a tree"))
    assert len(paths) == expected
    assert all(f"/{folder}/" in p for p in paths)


def test_app_search_hybrid_and_date_sort_run(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    app = _app(monkeypatch, library.env())
    app.toggle(key="hybrid").set_value(True)
    app.toggle(key="sort_by_date").set_value(True).run()
    app = _search(app, "a red car")
    dates = [tile.meta.split(" · ")[1] for tile in _tiles(app)]
    assert dates == sorted(dates, reverse=True) and len(dates) == COUNT


def test_app_search_more_like_this_excludes_the_photo(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    # As a browser opening a shared link: the query and options are bound to the URL.
    app = _app(monkeypatch, library.env(), params={"q": "a red car", "hybrid": "true"})
    assert app.text_input(key="q").value == "a red car" and app.toggle(key="hybrid").value
    tile = _tiles(app)[0]
    link = urlsplit(tile.links["More like this"])
    params = {k: v[0] for k, v in parse_qs(link.query).items()}
    # The link goes to the search page and keeps the query and options bound to the URL.
    assert link.path == "./" and params["like"] == str(tile.id)
    assert params["q"] == "a red car" and params["hybrid"] == "true"
    for name, value in params.items():
        app.query_params[name] = value
    app.run()
    assert not app.exception
    assert app.subheader[0].value == "More like this photo"
    paths = _result_paths(app)
    assert len(paths) == COUNT - 1 and tile.path not in paths
    app.button[0].click().run()  # back to the text search
    assert "like" not in app.query_params and len(_result_paths(app)) == COUNT


def test_app_search_upload_of_a_non_image_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    app = _app(monkeypatch, library.env())
    app.file_uploader(key="upload").upload("notes.jpg", b"this is not a photo", "image/jpeg").run()
    assert "not an image format" in app.error[0].value


def test_app_search_upload_of_a_photo_finds_similar(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    data = (library.photos / library.entries[0].file).read_bytes()
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buffer, format="JPEG")
    app = _app(monkeypatch, library.env())
    app.file_uploader(key="upload").upload("mine.jpg", buffer.getvalue(), "image/jpeg").run()
    assert not app.exception and not app.error
    assert "photos like your upload" in app.caption[0].value
    assert _result_paths(app)[0].endswith(library.entries[0].file)


def test_app_browse_paginates_the_library(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    app = _app(monkeypatch, library.env(), "pages/browse.py")
    app.select_slider(key="page_size").set_value(12).run()
    assert app.caption[0].value == f"{COUNT} photos · page 1 of 2"
    first_page = _result_paths(app)
    assert len(first_page) == 12
    app.pagination(key="browse-page").set_value(2).run()
    second_page = _result_paths(app)
    assert app.caption[0].value == f"{COUNT} photos · page 2 of 2"
    assert len(second_page) == COUNT - 12 and not set(first_page) & set(second_page)


def test_app_browse_folder_filter_and_empty_range(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    folder = next(e.file.split("/")[0] for e in library.entries if "/" in e.file)
    app = _app(monkeypatch, library.env(), "pages/browse.py")
    app.selectbox(key="browse-folder").set_value(folder).run()
    assert all(f"/{folder}/" in p for p in _result_paths(app))
    app.toggle(key="browse-use-dates").set_value(True).run()
    app.date_input(key="browse-dates").set_value((date(1990, 1, 1), date(1990, 12, 31))).run()
    assert "No photos in this folder and date range" in app.info[0].value


def test_app_detail_shows_caption_provenance_and_metadata(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary
) -> None:
    detail = library.catalog().list_images(page_size=1).items[0]
    app = _app(monkeypatch, library.env())
    app.query_params["id"] = str(detail.image.id)
    app.switch_page("pages/detail.py").run()
    assert not app.exception
    assert app.subheader[0].value.replace("\\", "") == detail.caption.text
    assert library.model in app.caption[0].value.replace("\\", "")
    assert (
        app.caption[1].value.replace("\\", "")
        == "Decoding: greedy, seq_len=8, min_seq_len=2, repetition_penalty=1.0"
    )
    assert "num_beams=6" in app.caption[1].help.replace("\\", "")  # every setting on hover
    facts = app.markdown[0].value.replace("\\", "")
    assert f"**Path:** {detail.image.abs_path}" in facts
    assert "160 × 120 px" in facts and "**Camera:** coca-world procedural camera" in facts
    assert app.subheader[1].value == "Similar photos"


@pytest.mark.parametrize("raw", ["../../etc/passwd", "/etc/passwd", "999999", "-1", "1 OR 1=1", ""])
def test_app_detail_bad_id_shows_not_found_only(
    monkeypatch: pytest.MonkeyPatch, library: AppLibrary, raw: str
) -> None:
    app = _app(monkeypatch, library.env())
    app.query_params["id"] = raw
    app.switch_page("pages/detail.py").run()
    assert not app.exception
    assert app.title[0].value == "Photo not found"
    assert not app.get("imgs") and not app.code and not app.subheader
