"""The app keeps serving, without errors, while an indexer writes to the same catalog."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import coca
import storage
from coca.world import write_library
from indexer.decode import DecodeConfig
from indexer.encode import EncodeConfig
from indexer.pipeline import IndexConfig, register_model, run_index
from search_app.search import DataLayout
from tests.indexer_support import fast_decoding
from tests.test_app_support import LIBRARY_SEED, build_library, tiny_model_folder

APP = str(Path(__file__).resolve().parent.parent / "search_app" / "app.py")
FIRST, TOTAL = 6, 30


def _check(app: AppTest) -> AppTest:
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert not app.error, [e.value for e in app.error]
    return app


@pytest.mark.slow
def test_app_reads_while_indexer_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model_folder(tmp_path / "model")
    library = build_library(tmp_path, FIRST, model)
    # More photos of the same split land in the folder; an indexer picks them up below.
    write_library(library.photos, TOTAL, seed=LIBRARY_SEED, width=160, height=120)
    for name, value in library.env().items():
        monkeypatch.setenv(name, value)

    loaded = coca.load(model)
    writer = storage.open_catalog(DataLayout(library.data).catalog_path)
    config = IndexConfig(
        photos_dir=library.photos,
        index_path=DataLayout(library.data).index_path(register_model(writer, loaded)),
        decode=DecodeConfig(workers=1),
        encode=EncodeConfig(batch_size=2, decoding=fast_decoding()),
        save_index_every_s=0.5,
    )
    failures: list[BaseException] = []

    def index() -> None:
        try:
            run_index(config, loaded, writer)
        except BaseException as error:  # reported by the main thread
            failures.append(error)

    search = AppTest.from_file(APP, default_timeout=120)
    _check(search)
    browse = AppTest.from_file(APP, default_timeout=120)
    _check(browse).switch_page("pages/browse.py")
    search.select_slider(key="k").set_value(100)
    search.text_input(key="q").set_value("a red car")
    thread = threading.Thread(target=index)
    thread.start()
    rounds = during = 0
    while thread.is_alive() or rounds < 2:
        during += thread.is_alive()
        _check(search)
        _check(browse)
        rounds += 1
    thread.join()
    assert not failures, failures
    assert during >= 2, "the indexer finished before the app could read alongside it"
    # Once the indexer is done, the app shows every photo: the index file was saved anew.
    assert _check(search).caption[0].value.startswith(f"{TOTAL} photos in ")
    assert _check(browse).caption[0].value.startswith(f"{TOTAL} photos")
