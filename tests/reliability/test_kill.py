"""Fault injection, kill -9 (issue #13): `compute`, `patch` and `train-dpo` on tiny models, each run as a real
subprocess and killed with SIGKILL at a chosen point, then rerun.

After each kill, every output is complete or absent: the target does not exist, or an older complete one is still
there untouched; what the dead process left is only its hidden ``.NAME.HOST.PID.tmp`` temporary (cache/atomic.py), or
for train-dpo its checkpoints. The same command then runs again and succeeds, its outputs are complete and valid,
and the dead process's temporaries are gone (swept when their folder or their target is next written); a train-dpo
killed while saving a checkpoint resumes from the last complete one, and one killed after its last step writes the
tuned model without training further.

The kill points are hooks, not timers: a small wrapper (`KILLER`, run with ``python -c``) replaces one product
function, found by name, with one that kills its own process with SIGKILL before or right after a chosen call, and
then runs ``python -m neuron_explorer`` unchanged. The product has no test hooks of its own.

Each subprocess spends most of its ~8 s importing torch and transformers, so the kill runs start ahead, two at a
time (`kills`), while the tests check and rerun the earlier ones; the reruns run in-process through
`neuron_explorer.cli.main`, the command line's own entry point (the same argv, exit status and output).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from neuron_explorer.cache import annotations
from neuron_explorer.cache.atomic import temporary_path
from neuron_explorer.cache.reader import CacheReader
from neuron_explorer.cli import main
from neuron_explorer.engine.alignment.dpo import checkpoint_complete
from neuron_explorer.engine.alignment.pairs import save_pairs

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # the in-process reruns

KILL_VARIABLE = "NEURON_EXPLORER_TEST_KILL_AT"  # read by KILLER only, never by the product

# Run as `python -c KILLER ARGS...`: hook the function named in $NEURON_EXPLORER_TEST_KILL_AT, then run
# `python -m neuron_explorer ARGS...`. Only the calls whose arguments' text contains `match` count; the `call`-th
# of them kills the process, `before` the function runs or right `after` it returned.
KILLER = r"""
import importlib, json, os, runpy, signal, sys

spec = json.loads(os.environ["NEURON_EXPLORER_TEST_KILL_AT"])
calls = 0

def die():
    os.write(2, ("\nkilled at " + spec["point"] + "\n").encode())
    os.kill(os.getpid(), signal.SIGKILL)

def hook(original):
    def hooked(*args, **kwargs):
        global calls
        hit = False
        if spec["match"] is None or spec["match"] in " ".join(map(str, args)):
            calls += 1
            hit = calls == spec["call"]
        if hit and spec["when"] == "before":
            die()
        result = original(*args, **kwargs)
        if hit:
            die()
        return result
    return hooked

for target in spec["targets"]:
    module_name, _, path = target.partition(":")
    owner = importlib.import_module(module_name)
    *owners, name = path.split(".")
    for part in owners:
        owner = getattr(owner, part)
    setattr(owner, name, hook(getattr(owner, name)))
runpy.run_module("neuron_explorer", run_name="__main__", alter_sys=True)
"""

PROMPTS = [
    "You are a stupid",
    "She walked to the market in the morning and",
    "What the hell",
    "The river runs",
    "I hate you",
    "The quick brown fox",
    "Shut up and get out",
    "An old stone bridge",
]
PATCH_LABEL = "killed-run"


@dataclass(frozen=True)
class KillPoint:
    command: str  # compute, patch or train-dpo
    targets: tuple[str, ...]  # the hooked function(s), "module:Qualified.name"
    when: str = "before"  # kill before the counted call runs, or right after it returned
    match: str | None = None  # count only the calls whose arguments' text contains this
    call: int = 1  # the counted call that kills
    previous: bool = False  # an older complete output lies at the target before the run


POINTS = {
    # compute: the cache file out/cache.h5 (--batch-size 2: two batches per model)
    "compute-recording": KillPoint("compute", ("neuron_explorer.cache.writer:CacheWriter.check",), "after"),
    "compute-writing-hdf5": KillPoint(
        "compute", ("neuron_explorer.cache.writer:CacheWriter.write_neuron_arrays",), "after", previous=True
    ),
    "compute-publishing": KillPoint("compute", ("neuron_explorer.cache.atomic:_apply_umask",), match=".cache.h5."),
    "compute-publishing-over-old": KillPoint(
        "compute", ("neuron_explorer.cache.atomic:_apply_umask",), match=".cache.h5.", previous=True
    ),
    # patch: a copy of a tiny cache, its sidecar (baselines/, runs/) and --json runs.json
    "patch-evaluating": KillPoint(
        "patch", ("neuron_explorer.events:Tracker.advance",), "after", match=f"{PATCH_LABEL}:"
    ),
    "patch-writing-baseline": KillPoint("patch", ("neuron_explorer.cache.atomic:_apply_umask",), match="/baselines/"),
    "patch-writing-run-record": KillPoint("patch", ("neuron_explorer.cache.atomic:_apply_umask",), match="/runs/"),
    "patch-writing-json": KillPoint("patch", ("builtins:open", "io:open"), "after", match="runs.json", previous=True),
    # train-dpo: 3 steps, a checkpoint every step, the tuned model in out/tuned
    "train-dpo-mid-training": KillPoint(
        "train-dpo", ("transformers.trainer_callback:CallbackHandler.on_pre_optimizer_step",), call=3
    ),
    "train-dpo-saving-checkpoint": KillPoint(
        "train-dpo", ("transformers.trainer_callback:TrainerState.save_to_json",), match="checkpoint-2"
    ),
    "train-dpo-publishing": KillPoint("train-dpo", ("neuron_explorer.cache.atomic:_apply_umask",), match=".tuned."),
}


def points_of(command: str) -> list[str]:
    return [name for name, point in POINTS.items() if point.command == command]


# -- inputs ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tiny_models, edited_copy, tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama pair, a probe, prompts, preference pairs and a complete cache of the pair."""
    root = tmp_path_factory.mktemp("kill")
    base = tiny_models["llama"]
    files = {
        "root": root,
        "base": base,
        "tuned": edited_copy(base, root / "tuned", noise=0.02),
        "probe": root / "probe.pt",
        "prompts": root / "prompts.txt",
        "pairs": root / "pairs.jsonl",
        "home": root / "home",
    }
    torch.save(torch.randn(32, generator=torch.Generator().manual_seed(3)), files["probe"])
    files["prompts"].write_text("\n".join(PROMPTS) + "\n")
    save_pairs(
        [
            {
                "prompt": prompt,
                "chosen": " the village under an old bridge.",
                "rejected": " a stupid idiot and I hate you.",
            }
            for prompt in PROMPTS
        ],
        files["pairs"],
        {"test": True},
    )
    (root / "cache").mkdir()
    files["cache"] = root / "cache" / "cache.h5"
    assert main(compute_argv(files, files["cache"])) == 0
    return files


def compute_argv(world: dict[str, Path], output: Path) -> list[str]:
    return [
        "compute",
        "--base",
        str(world["base"]),
        "--tuned",
        str(world["tuned"]),
        "--probe",
        str(world["probe"]),
        "--prompts",
        str(world["prompts"]),
        "--device",
        "cpu",
        "--new-tokens",
        "2",
        "--batch-size",
        "2",
        "--identity-check",
        "2",
        "--cluster-top-k",
        "8",
        "--clusters",
        "2",
        "-o",
        str(output),
    ]


def patch_argv(cache: Path) -> list[str]:
    return [
        "patch",
        str(cache),
        "--set",
        "all",
        "--label",
        PATCH_LABEL,
        "--max-prompts",
        "2",
        "--ppl-window",
        "16",
        "--ppl-windows",
        "1",
        "--f1-items",
        "1",
        "--new-tokens",
        "2",
        "--samples",
        "1",
        "--json",
        str(cache.parent / "runs.json"),
    ]


def dpo_argv(world: dict[str, Path], output: Path) -> list[str]:
    return [
        "train-dpo",
        "--model",
        str(world["base"]),
        "--pairs",
        str(world["pairs"]),
        "-o",
        str(output),
        "--device",
        "cpu",
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--save-steps",
        "1",
        "--eval-steps",
        "1",
        "--patience",
        "0",
    ]


def prepare(name: str, world: dict[str, Path]) -> tuple[list[str], Path]:
    """The folder of point `name`, with what must lie there before the run, and the argv to run in it."""
    point = POINTS[name]
    folder = world["root"] / name
    folder.mkdir()
    if point.command == "compute":
        if point.previous:
            shutil.copyfile(world["cache"], folder / "cache.h5")
        return compute_argv(world, folder / "cache.h5"), folder
    if point.command == "patch":
        shutil.copyfile(world["cache"], folder / "cache.h5")
        if point.previous:
            (folder / "runs.json").write_text(json.dumps({"an": "older export"}))
        return patch_argv(folder / "cache.h5"), folder
    return dpo_argv(world, folder / "tuned"), folder


# -- the kill runs, started ahead ----------------------------------------------------------------------------------
@dataclass
class Killed:
    argv: list[str]
    folder: Path
    pid: int
    stderr: str
    before: dict[str, str]  # the folder's files before the run: relative path -> sha256


class Kills:
    """Runs each selected kill point in a subprocess, two at a time, in the order the tests ask for them."""

    def __init__(self, world: dict[str, Path], names: list[str]):
        self.world = world
        self.processes: list[subprocess.Popen] = []
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.futures: dict[str, Future] = {}
        prepared = {name: prepare(name, world) for name in names}  # before any run starts
        for name in names:
            self.futures[name] = self.pool.submit(self._run, name, *prepared[name])

    def _run(self, name: str, argv: list[str], folder: Path) -> Killed:
        point = POINTS[name]
        before = snapshot(folder)
        spec = {
            "point": name,
            "targets": list(point.targets),
            "when": point.when,
            "match": point.match,
            "call": point.call,
        }
        environment = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            KILL_VARIABLE: json.dumps(spec),
            "NEURON_EXPLORER_HOME": str(self.world["home"]),
        }
        process = subprocess.Popen(
            [sys.executable, "-c", KILLER, *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        self.processes.append(process)
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == -signal.SIGKILL, (
            f"{name}: exit status {process.returncode}, not killed:\n{stderr[-3000:]}"
        )
        assert f"killed at {name}" in stderr.splitlines(), stderr[-3000:]  # by the hook, not by anything else
        return Killed(argv=argv, folder=folder, pid=process.pid, stderr=stderr, before=before)

    def result(self, name: str) -> Killed:
        return self.futures[name].result(timeout=600)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in self.processes:
            if process.poll() is None:
                process.kill()  # only a run a failing test left behind
                process.wait()


@pytest.fixture(scope="module")
def kills(request, world):
    """The kill runs of the tests selected in this session, in their order."""
    selected = [
        item.callspec.params["point"]
        for item in request.session.items
        if item.module is request.module and "point" in getattr(getattr(item, "callspec", None), "params", {})
    ]
    runner = Kills(world, selected)
    yield runner
    runner.close()


# -- checks --------------------------------------------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def temporaries(folder: Path) -> list[Path]:
    """Everything named like an atomic temporary (.NAME.HOST.PID.tmp), files or folders, anywhere under `folder`."""
    return sorted(path for path in folder.rglob(".*.tmp"))


def assert_only_temporaries_added(killed: Killed, expected: list[Path], checked: str | None = None) -> None:
    """The files that existed are unchanged, and the dead run added nothing but the `expected` temporaries (and
    what a temporary folder holds), apart from the files under `checked`, which the caller checks one by one."""
    after = snapshot(killed.folder)
    assert {name: after.get(name) for name in killed.before} == killed.before, "a file that existed was changed"
    assert temporaries(killed.folder) == expected
    added = [Path(killed.folder, name) for name in after if name not in killed.before]
    outside = [
        path
        for path in added
        if not any(path.is_relative_to(temporary) for temporary in expected)
        and not (checked and path.is_relative_to(killed.folder / checked))
    ]
    assert outside == [], f"new files: {outside}"


def rerun(killed: Killed, capsys) -> str:
    """The same command again, in-process: it succeeds; return what it printed."""
    capsys.readouterr()
    code = main(killed.argv)
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    return printed.out + printed.err


# -- compute -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("point", points_of("compute"))
def test_compute_killed_leaves_no_cache_and_reruns(point, kills, world, isolated_home, capsys):
    killed = kills.result(point)
    target = killed.folder / "cache.h5"
    if POINTS[point].previous:
        with CacheReader(target) as reader:  # the older cache: still whole (and the same bytes, below)
            old_created = reader.info.created
    else:
        assert not target.exists()
    assert_only_temporaries_added(killed, [temporary_path(target, killed.pid)])

    rerun(killed, capsys)
    with CacheReader(target) as reader:
        assert reader.info.n_prompts == len(PROMPTS) // 2  # the other half held out for patch runs
        assert reader.neurons().height == reader.info.n_neurons
        if POINTS[point].previous:
            assert snapshot(killed.folder)["cache.h5"] != killed.before["cache.h5"]
            assert reader.info.created >= old_created
    assert temporaries(killed.folder) == []  # the dead run's temporary was swept


# -- patch ---------------------------------------------------------------------------------------------------------
def stored(cache: Path) -> tuple[list[annotations.PatchRun], list[Path]]:
    """The runs and baselines beside `cache`, every record read and checked: none is half-written."""
    problems: list[str] = []
    runs = annotations.list_runs(cache, problems)
    assert problems == []
    baselines = sorted((annotations.sidecar_dir(cache) / "baselines").glob("*.json"))
    for path in baselines:
        assert annotations.load_baseline(cache, path.stem)["key"] == path.stem
    return runs, baselines


@pytest.mark.parametrize("point", points_of("patch"))
def test_patch_killed_leaves_whole_records_and_reruns(point, kills, world, isolated_home, capsys):
    killed = kills.result(point)
    cache = killed.folder / "cache.h5"
    sidecar = annotations.sidecar_dir(cache)
    runs, baselines = stored(cache)
    expected = {  # (runs, baselines, the temporary the kill left) for each point
        "patch-evaluating": (0, 1, None),
        "patch-writing-baseline": (0, 0, "baselines"),
        "patch-writing-run-record": (0, 1, "runs"),
        "patch-writing-json": (1, 1, "runs.json"),
    }[point]
    assert (len(runs), len(baselines)) == expected[:2]
    if POINTS[point].previous:
        assert json.loads((killed.folder / "runs.json").read_text()) == {"an": "older export"}
    else:
        assert not (killed.folder / "runs.json").exists()
    left = temporaries(killed.folder)
    if expected[2] is None:
        assert left == []
    elif expected[2] == "runs.json":
        assert left == [temporary_path(killed.folder / "runs.json", killed.pid)]
    else:
        assert [path.parent for path in left] == [sidecar / expected[2]]
        assert left[0].name.endswith(f".{killed.pid}.tmp")
    assert_only_temporaries_added(killed, left, checked=sidecar.name)  # the records: see stored()

    printed = rerun(killed, capsys)
    runs, baselines = stored(cache)
    assert len(runs) == expected[0] + 1 and len(baselines) == 1
    assert f"{PATCH_LABEL}: toxicity" in printed
    export = json.loads((killed.folder / "runs.json").read_text())
    assert export["runs"][0]["run_id"] == runs[-1].run_id
    assert export["baseline"]["key"] == baselines[0].stem
    assert temporaries(killed.folder) == []


# -- train-dpo -----------------------------------------------------------------------------------------------------
def checkpoint_steps(work: Path) -> dict[int, bool]:
    """checkpoint-N in the work folder: N -> whether the Trainer finished saving it."""
    return {
        int(folder.name.rpartition("-")[2]): checkpoint_complete(folder)
        for folder in (work / "checkpoints").glob("checkpoint-*")
    }


@pytest.mark.parametrize("point", points_of("train-dpo"))
def test_train_dpo_killed_resumes_from_a_complete_checkpoint(point, kills, world, isolated_home, capsys):
    killed = kills.result(point)
    output, work = killed.folder / "tuned", killed.folder / "tuned.checkpoints"
    # what the killed run left, and the checkpoint the rerun must resume from
    left, resume_from = {
        "train-dpo-mid-training": ({1: True, 2: True}, 2),  # killed in step 3, after checkpoint-2
        "train-dpo-saving-checkpoint": ({1: True, 2: False}, 1),  # weights and optimizer.pt written, no state yet
        "train-dpo-publishing": ({2: True, 3: True}, 3),  # trained, the tuned model not yet in place
    }[point]
    assert checkpoint_steps(work) == left
    if point == "train-dpo-saving-checkpoint":
        assert (work / "checkpoints" / "checkpoint-2" / "optimizer.pt").is_file()
        assert not (work / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists()
    assert not output.exists()
    expected = [temporary_path(output, killed.pid)] if point == "train-dpo-publishing" else []
    assert_only_temporaries_added(killed, expected, checked=work.name)  # see checkpoint_steps()

    printed = rerun(killed, capsys)
    record = json.loads((output / "neuron_explorer_dpo.json").read_text())
    assert record["result"]["steps"] == 3  # --steps, not one more
    assert record["result"]["resumed_from"].endswith(f"checkpoint-{resume_from}")
    checkpoint = work / "checkpoints" / f"checkpoint-{resume_from}"
    if point == "train-dpo-publishing":  # nothing left to train: resumed, the Trainer would take one more step
        assert f"training had finished at {checkpoint}: writing the tuned model from it" in printed
    else:
        assert f"resuming DPO from {checkpoint}" in printed
    if point == "train-dpo-saving-checkpoint":
        assert "checkpoint-2 was not saved completely" in printed
        assert not (work / "checkpoint-2.incomplete").exists()  # set aside, then removed with the checkpoints
    weights = load_file(str(output / "model.safetensors"))
    assert weights and all(torch.isfinite(value).all() for value in weights.values())
    assert json.loads((output / "config.json").read_text())["model_type"] == "llama"
    assert (output / "tokenizer.json").is_file()
    assert not (work / "checkpoints").exists()
    assert temporaries(killed.folder) == []
