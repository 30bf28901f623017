"""Launching: bad files give one line and exit code 2; the real entry point runs in a pseudo-terminal;
a missing default cache is built with its output shown."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pexpect
import pytest

from neuron_explorer.errors import UserError
from neuron_explorer.explorer.app import ExplorerApp, run_explorer
from neuron_explorer.explorer.screens.build import BuildScreen
from neuron_explorer.explorer.screens.overview import OverviewScreen

ANSI = re.compile(r"\x1b\[[0-9;?<>=]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>78]|\x1b\][^\x07]*\x07")


def command() -> list[str]:
    found = shutil.which("neuron-explorer", path=os.path.dirname(sys.executable)) or shutil.which("neuron-explorer")
    return [found] if found else [sys.executable, "-m", "neuron_explorer"]


def bad_files(tmp_path):
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as handle:
        handle["data"] = np.arange(3)
    return {"missing": tmp_path / "missing.h5", "corrupt": corrupt, "foreign": foreign}


@pytest.mark.parametrize("kind", ["missing", "corrupt", "foreign"])
def test_bad_file_is_refused_before_the_app_starts(tmp_path, kind):
    with pytest.raises(UserError):
        run_explorer(bad_files(tmp_path)[kind])


@pytest.mark.parametrize("kind", ["missing", "corrupt", "foreign"])
@pytest.mark.slow  # a real process: the fast lane (pytest -m 'not slow') skips it
def test_bad_file_from_the_command_line_is_one_line_and_exit_code_2(tmp_path, kind):
    path = bad_files(tmp_path)[kind]
    done = subprocess.run([*command(), str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("neuron-explorer: error:") and "Traceback" not in done.stderr


@pytest.mark.slow  # a real process: the fast lane (pytest -m 'not slow') skips it
def test_entry_point_in_a_pseudo_terminal(cache_path):
    """Start the real `neuron-explorer FILE` at 80×24, move to the table, sort, open a neuron, quit with q."""
    program, *args = command()
    child = pexpect.spawn(
        program,
        [*args, str(cache_path)],
        dimensions=(24, 80),
        encoding="utf-8",
        env={**os.environ, "TERM": "xterm-256color"},
        timeout=30,
    )
    try:
        child.expect("Group shares")  # the overview is on screen
        child.send("2")
        child.expect("all layers · 256 neurons")
        child.send("l")
        child.send("s")
        child.expect("sort δ▼")  # ▼: sorted descending (↓ and ↑ name group directions only)
        child.send("\r")
        child.expect("Metrics, both models")
        child.send("\x1b")
        time.sleep(0.5)  # an escape followed at once by q would read as alt+q
        child.send("q")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


async def test_missing_default_cache_is_built_with_visible_progress(tmp_path, session_cache):
    target, go = tmp_path / "default.h5", tmp_path / "go"
    # the stand-in build finishes only once the test has seen the build screen (a fixed sleep raced a loaded machine)
    script = textwrap.dedent(f"""
        import os, shutil, time
        from neuron_explorer.events import Done, Progress, to_json
        for step in range(3):
            print(to_json(Progress("building", step, 3)), flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.05)
        shutil.copyfile({str(session_cache)!r}, {str(target)!r})
        print(to_json(Done()), flush=True)
    """)
    app = ExplorerApp(build_target=target, build_command=(sys.executable, "-c", script))
    async with app.run_test(size=(80, 24)) as pilot:
        assert isinstance(app.screen, BuildScreen)
        go.touch()
        for _ in range(100):
            await pilot.pause(0.05)
            if isinstance(app.screen, OverviewScreen):
                break
        assert isinstance(app.screen, OverviewScreen) and app.store is not None
    app.store.reader.close()


async def test_the_build_screen_follows_the_builds_typed_events(tmp_path, session_cache):
    """The real build runs with --progress-json: stages as Progress, lines as Message, the closing table as Done;
    a library's own line is not an event, and is not shown while the build goes well."""
    target, go = tmp_path / "default.h5", tmp_path / "go"
    script = textwrap.dedent(f"""
        import os, shutil, time
        from neuron_explorer.events import Done, Message, Progress, to_json
        print(to_json(Progress("build: probe", 3, 8)), flush=True)
        print(to_json(Message("[probe] running")), flush=True)
        print("a library talks", flush=True)
        while not os.path.exists({str(go)!r}):  # until the test has read the screen mid-build
            time.sleep(0.05)
        shutil.copyfile({str(session_cache)!r}, {str(target)!r})
        print(to_json(Done("stage status seconds")), flush=True)
    """)
    app = ExplorerApp(build_target=target, build_command=(sys.executable, "-c", script))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert isinstance(screen, BuildScreen)
        for _ in range(100):
            await pilot.pause(0.05)
            if "[probe] running" in screen.query_one("Log").lines:  # the last event before the script pauses
                break
        assert str(screen.query_one("#build-stage").content) == "build: probe: 3/8"
        assert screen.query_one("ProgressBar").progress == 3 and screen.query_one("ProgressBar").total == 8
        assert screen.query_one("Log").lines[-1:] == ["[probe] running"]
        assert "a library talks" not in screen.query_one("Log").lines
        assert not any("{" in line for line in screen.query_one("Log").lines)  # no raw JSON reaches the user
        go.touch()
        for _ in range(100):
            await pilot.pause(0.05)
            if isinstance(app.screen, OverviewScreen):
                break
        assert isinstance(app.screen, OverviewScreen)
    app.store.reader.close()


async def test_a_build_that_reports_its_failure_shows_the_reason(tmp_path):
    script = (
        "from neuron_explorer.events import Failed, to_json; "
        "print(to_json(Failed('no space left to write x.h5: free some space')), flush=True); raise SystemExit(2)"
    )
    app = ExplorerApp(build_target=tmp_path / "never.h5", build_command=(sys.executable, "-c", script))
    async with app.run_test(size=(80, 24)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        title = str(app.screen.query_one("#build-title").content)
        assert "exit code 2" in title and "no space left to write x.h5" in title


async def test_a_failed_build_says_so_and_stays(tmp_path):
    app = ExplorerApp(
        build_target=tmp_path / "never.h5",
        build_command=(sys.executable, "-c", "print('no model here'); raise SystemExit(3)"),
    )
    async with app.run_test(size=(80, 24)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, BuildScreen)
        assert "exit code 3" in str(app.screen.query_one("#build-title").content)
        assert any("no model here" in line for line in app.screen.query_one("Log").lines)
