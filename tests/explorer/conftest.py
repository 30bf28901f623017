"""A small synthetic cache built once per session, and apps over it that draw the same way every run."""

from __future__ import annotations

import dataclasses
import io
import shutil
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from textual.reactive import reactive
from textual.widgets import Input

from neuron_explorer.engine.neurons.synthetic import build_synthetic_cache
from neuron_explorer.explorer.app import ExplorerApp
from neuron_explorer.explorer.screens.detail import DetailScreen
from neuron_explorer.explorer.state import Store

FIXED_CREATED = "2026-01-01T00:00:00+00:00"  # the real date varies; snapshots must not


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    """Without a checkpoint series, like the build's caches: the overview and the detail show no dynamics."""
    return build_synthetic_cache(tmp_path_factory.mktemp("cache") / "synthetic.h5", dynamics=False)


@pytest.fixture(scope="session")
def series_cache(tmp_path_factory):
    """The same cache with a checkpoint series of three steps (a third, two thirds and all of the final Δ)."""
    return build_synthetic_cache(tmp_path_factory.mktemp("series") / "synthetic.h5")


@pytest.fixture
def cache_path(session_cache, tmp_path):
    """A private copy, so that sets and runs written by one test never show up in another."""
    path = tmp_path / "synthetic.h5"
    shutil.copyfile(session_cache, path)
    return path


@pytest.fixture(autouse=True)
def no_cursor_blink(monkeypatch):
    """A blinking cursor would make screenshots differ from run to run."""
    blink = reactive(False, init=False)
    blink.__set_name__(Input, "cursor_blink")
    monkeypatch.setattr(Input, "cursor_blink", blink)


def open_store(path) -> Store:
    """The cache's store with its `created` date fixed: the real date varies, and snapshots must not."""
    store = Store.open(path)
    store.info = dataclasses.replace(store.info, created=FIXED_CREATED)
    store.reader.info = store.info
    return store


@pytest.fixture
def make_app(cache_path):
    """`make_app(cache=None, **options)`: an app over the private cache copy, or over a copy of `cache` (options such
    as `patch_command=` go to ExplorerApp); their stores are closed when the test ends."""
    apps = []

    def make(cache: Path | None = None, **options) -> ExplorerApp:
        path = cache_path
        if cache is not None:  # another cache (series_cache), copied like the default one, under the same name
            path = cache_path.parent / f"other-{len(apps)}" / cache_path.name
            path.parent.mkdir()
            shutil.copyfile(cache, path)
        app = ExplorerApp(open_store(path), **options)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.store.reader.close()


@pytest.fixture(scope="session")
def fake_patch_command() -> tuple[str, str]:
    """A `patch` command for the app's jobs that reports the real job events without a model (fake_patch_job.py)."""
    return sys.executable, str(Path(__file__).with_name("fake_patch_job.py"))


@pytest.fixture(scope="session")
def fake_lab_command() -> tuple[str, str]:
    """A `lab` command for the app's prompt lab that speaks the real protocol without a model (fake_lab_worker.py)."""
    return sys.executable, str(Path(__file__).with_name("fake_lab_worker.py"))


@pytest.fixture(scope="session")
def wait_for():
    """`await wait_for(pilot, condition, timeout=20.0)`: pause the pilot until `condition()` holds; fail on timeout."""

    async def wait(pilot, condition, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("timed out")
            await pilot.pause(0.05)

    return wait


@pytest.fixture(scope="session")
def wait_until_loaded():
    """`await wait_until_loaded(app, pilot)`: the neuron frame is read in a worker after the overview shows; tests of
    the table (and snapshots) wait for the app's workers to finish."""

    async def wait(app: ExplorerApp, pilot) -> None:
        await app.workers.wait_for_complete()
        await pilot.pause()

    return wait


@pytest.fixture(scope="session")
def open_first_detail(wait_until_loaded):
    """`screen = await open_first_detail(app, pilot)`: the neurons screen, then the detail of its first row."""

    async def open_detail(app: ExplorerApp, pilot) -> DetailScreen:
        await pilot.press("2")
        await wait_until_loaded(app, pilot)
        await pilot.press("enter")
        await wait_until_loaded(app, pilot)
        assert isinstance(app.screen, DetailScreen)
        return app.screen

    return open_detail


@pytest.fixture(scope="session")
def static_text():
    """`static_text(widget, width=160)`: what a Static shows, as plain text (its content may be a rich Table, which
    has no useful str())."""

    def text(widget, width: int = 160) -> str:
        console = Console(width=width, record=True, file=io.StringIO())
        console.print(widget.content)
        return console.export_text()

    return text
