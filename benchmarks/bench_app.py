"""The search app in a real browser: query typed -> results rendered, and a concurrent soak.

    .venv/bin/python benchmarks/bench_app.py                       # 10,000 photos, 30 queries, soak
    .venv/bin/python benchmarks/bench_app.py --count 2000 --soak-s 20 --sessions 4

1. A library of generated photos (coca.world, 640x480, JPEG + PNG) is written and indexed once,
   cached under --folder. With coca/default_model/ installed it is indexed with the default model
   and its own captions. Without it, a random-weight coca_tiny bundle embeds the photos (embeddings
   only: its captions are noise and its greedy decoding would take an hour on 2 cores) and each
   photo gets its manifest's first reference caption, recorded with decoding {"benchmark_fill":
   true} so nobody mistakes it for model output. The app's work per query is the same either way.
2. `coca-search serve` runs as a subprocess; Debian's chromium (Playwright) types each query and
   the clock stops when the script run has finished and every thumbnail has decoded pixels.
3. --sessions browsers search in a loop for --soak-s seconds; errors are timeouts, Streamlit
   exceptions or alerts, JavaScript errors and dropped connections.

Prints one JSON object (also written to --out when given).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_app_support import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

SEARCH_BOX = "Describe what you are looking for"
# Finished: a script run was seen and is over, and every thumbnail of the grid has decoded.
DONE_JS = """() => {
    const app = document.querySelector('[data-test-script-state]');
    const images = [...document.querySelectorAll('.coca-grid img')];
    return window.__sawRun && app && app.getAttribute('data-test-script-state') === 'notRunning'
        && images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0);
}"""
WATCH_JS = """() => {
    window.__sawRun = false;
    if (window.__watcher) window.__watcher.disconnect();
    // Watch the whole document: React may replace the element that carries the state.
    window.__watcher = new MutationObserver((records) => {
        const app = document.querySelector('[data-test-script-state]');
        const now = app && app.getAttribute('data-test-script-state');
        if (now === 'running' || records.some(r => r.oldValue === 'running')) {
            window.__sawRun = true;
        }
    });
    window.__watcher.observe(document.body, {attributes: true, subtree: true,
        attributeOldValue: true, attributeFilter: ['data-test-script-state']});
}"""
PROBLEMS_JS = """() => document.querySelectorAll(
    '[data-testid="stException"], [data-testid="stAlert"]').length"""


@dataclass(frozen=True)
class BenchConfig:
    folder: Path
    count: int
    queries: int
    sessions: int
    soak_s: float
    port: int


@dataclass(frozen=True)
class Library:
    data: Path
    model: str
    captions: str  # "model" or "manifest (benchmark fill)"
    build_s: float


# -- library ------------------------------------------------------------------------------------


def _model_source(folder: Path) -> tuple[str, bool]:
    """("default", True) when the default model is installed, else a tiny bundle."""
    if (ROOT / "coca" / "default_model" / "config.json").is_file():
        return "default", True
    from tests.indexer_support import save_tiny_bundle

    bundle = folder / "tiny_model"
    if not (bundle / "config.json").is_file():
        save_tiny_bundle(bundle)
    return str(bundle), False


def _indexed(data: Path, count: int) -> bool:
    import storage

    path = data / "catalog.db"
    if not path.is_file():
        return False
    stats = storage.open_catalog(path).stats()
    return stats.ok == count and any(m.captions == count for m in stats.models)


def _fill_captions(data: Path, photos: Path) -> None:
    """Give every photo its manifest's first reference caption (the tiny model's are noise)."""
    import storage
    from coca.world import read_manifest

    catalog = storage.open_catalog(data / "catalog.db")
    (model,) = catalog.list_models()
    texts = {e.file: e.captions[0] for e in read_manifest(photos)}
    ids, vectors = catalog.load_embeddings(model.id)
    details = {d.image.id: d.image.path for d in catalog.get_images(ids.tolist())}
    results = [
        storage.ImageResult(
            int(i), v, storage.NewCaption(texts[details[int(i)]], {"benchmark_fill": True})
        )
        for i, v in zip(ids, vectors, strict=True)
    ]
    for start in range(0, len(results), 1000):
        catalog.store_results(model.id, results[start : start + 1000])


def prepare_library(config: BenchConfig) -> Library:
    from coca.world import HELDOUT_SEED, MANIFEST_NAME, write_library

    folder = config.folder / f"library-{config.count}"
    photos, data = folder / "photos", folder / "data"
    model, is_default = _model_source(config.folder)
    captions = "model" if is_default else "manifest (benchmark fill)"
    if _indexed(data, config.count):
        return Library(data, model, captions, 0.0)
    started = time.perf_counter()
    if not (photos / MANIFEST_NAME).is_file():
        print(f"writing {config.count} photos to {photos} ...", file=sys.stderr)
        write_library(photos, config.count, seed=HELDOUT_SEED)
    command = [sys.executable, "-m", "coca_search", "index", str(photos), "--data", str(data)]
    command += ["--model", model, "--device", "cpu"] + ([] if is_default else ["--no-captions"])
    subprocess.run(command, check=True)
    if not is_default:
        _fill_captions(data, photos)
    return Library(data, model, captions, round(time.perf_counter() - started, 1))


# -- server -------------------------------------------------------------------------------------


def start_server(library: Library, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "coca_search", "serve", "--data", str(library.data)]
    command += ["--model", library.model, "--port", str(port), "--device", "cpu"]
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    stop_server(process)
    raise RuntimeError(f"server did not start:\n{log.read_text()}")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


# -- browser ------------------------------------------------------------------------------------


def query_set(count: int) -> list[str]:
    from coca.world import COLORS, KINDS

    words = [f"a {color} {kind}" for kind in KINDS for color in COLORS]
    return [words[(i * 7) % len(words)] for i in range(count)]


async def _open(browser, url: str, errors: list[str]):  # noqa: ANN001, ANN202 - playwright types
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    page.on("pageerror", lambda error: errors.append(f"javascript: {error}"))
    await page.goto(url + "/")
    await page.get_by_label(SEARCH_BOX).wait_for(timeout=180_000)
    return page


async def _one_query(page, query: str, timeout_ms: float) -> float:  # noqa: ANN001
    """Seconds from pressing Enter to every result thumbnail rendered."""
    box = page.get_by_label(SEARCH_BOX)
    await box.fill(query)
    await page.evaluate(WATCH_JS)
    started = time.perf_counter()
    await box.press("Enter")
    await page.wait_for_function(DONE_JS, timeout=timeout_ms, polling=10)
    return time.perf_counter() - started


def cpu_seconds(server_pgid: int) -> dict[str, float]:
    """CPU time (user + system) used so far by the server's processes and by chromium's.

    Wall-clock latency on a shared machine depends on its other load; CPU time per query does
    not, and on an idle 2-core machine the latency is bounded by it.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    used = {"server": 0.0, "browser": 0.0}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            exe = os.readlink(f"/proc/{entry}/exe")
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        if int(fields[2]) == server_pgid:  # field 5 of stat: the process group
            used["server"] += seconds
        elif "chromium" in exe:
            used["browser"] += seconds
    return used


async def measure_latency(url: str, queries: list[str], server_pgid: int) -> dict[str, object]:
    from playwright.async_api import async_playwright

    errors: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await _open(browser, url, errors)
        await _one_query(page, "warm up the model", 180_000)  # loads the model once
        before, load_before = cpu_seconds(server_pgid), os.getloadavg()[0]
        seconds = [await _one_query(page, q, 60_000) for q in queries]
        after, load_after = cpu_seconds(server_pgid), os.getloadavg()[0]
        server_ms = await page.get_by_text(" photos in ").first.inner_text()
        await browser.close()
    ms = sorted(s * 1000 for s in seconds)
    return {
        "queries": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 1),
        "max_ms": round(ms[-1], 1),
        "cpu_ms_per_query": {
            name: round(1000 * (after[name] - before[name]) / len(ms), 1) for name in after
        },
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
        "last_server_caption": server_ms,
        "errors": errors,
    }


async def _session(browser, url: str, queries: list[str], until: float, offset: int) -> dict:  # noqa: ANN001
    errors: list[str] = []
    done = 0
    latencies: list[float] = []
    try:
        page = await _open(browser, url, errors)
    except Exception as error:  # noqa: BLE001 - every failure is a soak error
        return {"done": 0, "errors": [f"open: {error}"], "latencies": []}
    while time.monotonic() < until:
        query = queries[(offset + done) % len(queries)]
        try:
            latencies.append(await _one_query(page, query, 30_000))
            if await page.evaluate(PROBLEMS_JS):
                errors.append(f"exception or alert shown for {query!r}")
        except Exception as error:  # noqa: BLE001
            errors.append(f"{query!r}: {type(error).__name__}: {str(error)[:200]}")
        done += 1
    return {"done": done, "errors": errors, "latencies": latencies}


async def soak(url: str, sessions: int, seconds: float, queries: list[str]) -> dict[str, object]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        until = time.monotonic() + seconds
        runs = [_session(browser, url, queries, until, 5 * i) for i in range(sessions)]
        results = await asyncio.gather(*runs)
        await browser.close()
    latencies = sorted(x * 1000 for r in results for x in r["latencies"])
    errors = [e for r in results for e in r["errors"]]
    return {
        "sessions": sessions,
        "seconds": seconds,
        "queries_done": sum(r["done"] for r in results),
        "errors": len(errors),
        "error_samples": errors[:10],
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p90_ms": round(latencies[int(0.9 * (len(latencies) - 1))], 1) if latencies else None,
    }


# -- main ---------------------------------------------------------------------------------------


def parse_args() -> tuple[BenchConfig, bool, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/coca-bench-app"))
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--soak-s", type=float, default=60.0)
    parser.add_argument("--port", type=int, default=8531)
    parser.add_argument("--no-soak", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    config = BenchConfig(
        args.folder, args.count, args.queries, args.sessions, args.soak_s, args.port
    )
    return config, not args.no_soak, args.out


def main() -> None:
    config, with_soak, out = parse_args()
    config.folder.mkdir(parents=True, exist_ok=True)
    library = prepare_library(config)
    process = start_server(library, config.port, config.folder / "serve.log")
    url = f"http://127.0.0.1:{config.port}"
    try:
        report: dict[str, object] = {
            "library": {**asdict(library), "data": str(library.data), "photos": config.count},
            "cpus": os.cpu_count(),
            "latency": asyncio.run(measure_latency(url, query_set(config.queries), process.pid)),
        }
        if with_soak:
            report["soak"] = asyncio.run(soak(url, config.sessions, config.soak_s, query_set(200)))
    finally:
        stop_server(process)
    text = json.dumps(report, indent=2)
    print(text)
    if out is not None:
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
