"""Hostile caches, sidecar records and outputs (issue #20), handed over by a collaborator or typed by an impatient
user. Every command that reads a cache (the explorer, `patch`, `lab`) validates it the same way (`reader.
open_cache_file`) and refuses, in one line: storage outside the file (external raw storage, external links, also to
a FIFO, virtual datasets), links, a FIFO as the cache, and values no cache holds. A damaged sidecar record is skipped
(named) and never hangs or crashes the reader. Outputs never replace a device, a pipe or an input. User text is never
read as rich markup.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading

import h5py
import numpy as np
import pytest

from neuron_explorer.cache import annotations
from neuron_explorer.cache.reader import CacheReader
from neuron_explorer.cli import main
from neuron_explorer.engine.neurons.synthetic import build_synthetic_cache
from neuron_explorer.errors import UserError
from neuron_explorer.explorer.app import run_explorer


@pytest.fixture(scope="module")
def good_cache(tmp_path_factory):
    return build_synthetic_cache(tmp_path_factory.mktemp("good") / "cache.h5", n_layers=2, d_mlp=4, n_prompts=6)


def replace_dataset(name, **options):
    def change(handle, folder):
        del handle[name]
        handle.create_dataset(name, **options(folder) if callable(options) else options)

    return change


def external_storage(handle, folder):
    secret = folder / "secret.txt"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 4)
    del handle["neurons/contribution"]
    handle.create_dataset("neurons/contribution", shape=(2, 4), dtype="f4", external=[(str(secret), 0, 32)])


def external_link(target_kind):
    def change(handle, folder):
        other = folder / "other.h5"
        if target_kind == "fifo":
            os.mkfifo(other)
        else:
            with h5py.File(other, "w") as source:
                source["vocab"] = np.array([b"leaked"] * 500)
        del handle["vocab"]
        handle["vocab"] = h5py.ExternalLink(str(other), "/vocab")

    return change


def virtual_dataset(handle, folder):
    other = folder / "source.h5"
    with h5py.File(other, "w") as source:
        source["data"] = np.ones((2, 4), dtype="f4")
    layout = h5py.VirtualLayout(shape=(2, 4), dtype="f4")
    layout[:] = h5py.VirtualSource(str(other), "data", shape=(2, 4))
    del handle["neurons/contribution"]
    handle.create_virtual_dataset("neurons/contribution", layout)


def soft_link(handle, folder):
    del handle["neurons/contribution"]
    handle["neurons/contribution"] = h5py.SoftLink("/neurons/cos_pre")


def attribute(name, value):
    def change(handle, folder):
        handle.attrs[name] = value

    return change


def provenance(edit):
    def change(handle, folder):
        record = json.loads(handle.attrs["provenance"])
        edit(record)
        handle.attrs["provenance"] = json.dumps(record)

    return change


def group_codes(handle, folder):
    codes = handle["neurons/group"][()]
    codes[0, 0] = 9
    handle["neurons/group"][...] = codes


def declared_but_not_stored(handle, folder):
    """A small file that declares 2 × 4,000,000 neurons: every per-neuron array has that shape, none is stored."""
    handle.attrs["d_mlp"] = 4_000_000
    for name in list(handle["neurons"]):
        dtype = handle["neurons"][name].dtype
        shape = (2, 4_000_000) + handle["neurons"][name].shape[2:]
        del handle["neurons"][name]
        handle["neurons"].create_dataset(name, shape=shape, dtype=dtype, chunks=(1, 65536) + shape[2:])


# name -> (how the file is damaged, what the one-line error says)
HOSTILE_CACHES = {
    "external raw storage": (external_storage, "keeps its values in another file"),
    "external link": (external_link("file"), r"/vocab is a link \(ExternalLink\)"),
    "external link to a FIFO": (external_link("fifo"), r"/vocab is a link \(ExternalLink\)"),
    "virtual dataset": (virtual_dataset, "virtual dataset that reads other files"),
    "soft link": (soft_link, r"is a link \(SoftLink\)"),
    "group code 9": (group_codes, "codes outside 0–7"),
    "n_layers NaN": (attribute("n_layers", float("nan")), "n_layers is nan, not a whole number"),
    "n_layers 0": (attribute("n_layers", 0), "n_layers is 0, not a whole number of at least 1"),
    "600 M neurons": (attribute("d_mlp", 300_000_000), "more than any model has"),
    "declared but not stored": (declared_but_not_stored, "holds only"),
    "provenance a list": (attribute("provenance", "[1, 2]"), "provenance attribute is not a JSON object"),
    "provenance a number": (attribute("provenance", 5), "should hold JSON text"),
    "provenance not JSON": (attribute("provenance", "{not json"), "damaged"),
    "provenance with NaN": (attribute("provenance", '{"x": NaN}'), "non-JSON constant NaN"),
    "provenance nested deeply": (attribute("provenance", "[" * 100_000 + "]" * 100_000), "nested too deeply"),
    "provenance base a string": (provenance(lambda record: record.update(base="x")), "'base' is not a JSON object"),
    "new_tokens 1e9": (
        provenance(lambda record: record["settings"].update(new_tokens=10**9)),
        "new_tokens = 1000000000, outside",
    ),
    "new_tokens negative": (provenance(lambda record: record["settings"].update(new_tokens=-5)), "new_tokens = -5"),
    "new_tokens a float": (provenance(lambda record: record["settings"].update(new_tokens=1e9)), "new_tokens ="),
    "columns not JSON": (lambda handle, folder: handle["summary"].attrs.__setitem__("columns", "{nope"), "damaged"),
    "schema version a string": (attribute("schema_version", "2"), "schema version that is not a number"),
}


def hostile(good_cache, folder, kind):
    path = folder / "cache.h5"
    shutil.copyfile(good_cache, path)
    with h5py.File(path, "r+") as handle:
        HOSTILE_CACHES[kind][0](handle, folder)
    return path


COMMANDS = {
    "explorer": None,
    "patch": ["patch", "{cache}", "--set", "group:TP↓", "--mode", "zero-ablate", "--no-save"],
    "lab": ["lab", "{cache}", "--prompt", "You are"],
}


def refused_in_a_thread(call, seconds=60):
    """``call()``'s outcome; a call that hangs (an external link to a FIFO did) fails the test instead."""
    outcome = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: B036 -- handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "hung"
    return outcome


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", HOSTILE_CACHES)
def test_a_hostile_cache_is_refused_in_one_line_by_every_command(good_cache, tmp_path, kind, command, capsys):
    """Fails on the old code for most kinds: they passed validation (then leaked another file's bytes, hung, or
    crashed with a traceback), or `patch`/`lab` gave a traceback where the explorer gave one line."""
    path = hostile(good_cache, tmp_path, kind)
    message = HOSTILE_CACHES[kind][1]
    if command == "explorer":
        outcome = refused_in_a_thread(lambda: run_explorer(path))
        assert isinstance(outcome.get("error"), UserError), outcome
        error = str(outcome["error"])
    else:
        argv = [part.format(cache=path) for part in COMMANDS[command]]
        outcome = refused_in_a_thread(lambda: main(argv))
        assert outcome.get("value") == 2, outcome
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("neuron-explorer: error: ")
    assert re.search(message, error) and "\n" not in error.strip()
    assert not annotations.sidecar_dir(path).exists()


def test_a_fifo_as_the_cache_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "cache.h5"
    os.mkfifo(fifo)
    outcome = refused_in_a_thread(lambda: CacheReader(fifo))
    assert isinstance(outcome.get("error"), UserError) and "not a regular file" in str(outcome["error"])


def test_the_good_cache_still_opens(good_cache):
    with CacheReader(good_cache) as reader:
        assert reader.info.n_layers == 2 and reader.neurons().height == 8


# -- sidecar records -----------------------------------------------------------------------------------------------
def deep(depth):
    return "[" * depth + "]" * depth


RECORD_DAMAGE = {
    "a FIFO": None,
    "nested deeply": deep(100_000),
    "a bare NaN": json.dumps({"created": "x", "settings": {}, "metrics": {"toxicity": 1}}).replace("1}", "NaN}"),
    "a baseline outside the sidecar": json.dumps(
        {"created": "x", "settings": {"baseline": "../../../secret"}, "metrics": {}}
    ),
    "a baseline of the wrong type": json.dumps({"created": "x", "settings": {"baseline": ["a"]}, "metrics": {}}),
    "settings of the wrong type": json.dumps({"created": "x", "settings": "all", "metrics": {}}),
}


@pytest.mark.parametrize("kind", RECORD_DAMAGE)
def test_a_hostile_run_record_is_skipped_and_named(good_cache, tmp_path, kind):
    """Fails on the old code: a FIFO hung the reader, deep nesting raised RecursionError, and the NaN and baseline
    records were accepted."""
    cache = tmp_path / "cache.h5"
    shutil.copyfile(good_cache, cache)
    good = annotations.save_run(cache, {"label": "the good run"}, {"toxicity": 0.25}, [])
    broken = annotations.sidecar_dir(cache) / "runs" / "hostile.json"
    if RECORD_DAMAGE[kind] is None:
        os.mkfifo(broken)
    else:
        broken.write_text(RECORD_DAMAGE[kind])
    problems: list[str] = []
    outcome = refused_in_a_thread(lambda: annotations.list_runs(cache, problems))
    assert [run.run_id for run in outcome["value"]] == [good.run_id]
    assert len(problems) == 1 and "hostile.json" in problems[0] and "\n" not in problems[0]
    asked = refused_in_a_thread(lambda: annotations.load_run(cache, "hostile"))  # by name: an error, one line
    assert isinstance(asked.get("error"), UserError) and "\n" not in str(asked["error"])


def test_a_baseline_key_never_leaves_the_sidecar(good_cache, tmp_path):
    cache = tmp_path / "cache.h5"
    shutil.copyfile(good_cache, cache)
    (tmp_path / "secret.json").write_text(json.dumps({"base": {"toxicity": 1}}))
    (annotations.sidecar_dir(cache) / "baselines").mkdir(parents=True)
    assert annotations.load_baseline(cache, "../../secret") is None
    assert annotations.load_baseline(cache, "../secret") is None


def test_records_are_strict_json_and_lone_surrogates_are_written(good_cache, tmp_path):
    """Fails on the old code: a NaN metric was written as a bare NaN (not JSON), and a lone surrogate in a label
    (a model's broken output) made the write fail with UnicodeEncodeError."""
    cache = tmp_path / "cache.h5"
    shutil.copyfile(good_cache, cache)
    run = annotations.save_run(
        cache, {"label": "a\ud800b"}, {"toxicity": float("nan"), "ppl": float("inf"), "f1": np.float32(0.5)}, []
    )
    text = (annotations.sidecar_dir(cache) / "runs" / f"{run.run_id}.json").read_text(encoding="utf-8")
    record = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in a record"))
    assert record["metrics"] == {"toxicity": None, "ppl": None, "f1": 0.5}
    assert record["settings"]["label"] == "a\\ud800b"
    assert [listed.run_id for listed in annotations.list_runs(cache)] == [run.run_id]


# -- outputs ---------------------------------------------------------------------------------------------------------
def test_a_device_or_pipe_is_never_replaced_by_a_rename(tmp_path):
    """Fails on the old code: `-o /dev/null` was replaced by a regular file (as root) or failed with a traceback."""
    from neuron_explorer.cache.atomic import write_text_atomically

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for target in (fifo, tmp_path / "link-to-null"):
        if target.name == "link-to-null":
            target.symlink_to("/dev/null")
        with pytest.raises(UserError, match="not a regular file"):
            write_text_atomically(target, "{}")
    assert not fifo.is_file() and (tmp_path / "link-to-null").is_symlink()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link-to-null", "pipe"]


@pytest.mark.parametrize(
    "argv",
    [
        ["compute", "-o", "/dev/null"],
        ["patch", "{cache}", "--json", "/dev/null", "--set", "group:TP↓"],
        ["make-pairs", "-o", "/dev/null"],
    ],
)
def test_a_special_file_as_output_is_one_line(good_cache, argv, capsys):
    code = main([part.format(cache=good_cache) for part in argv])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "not a regular file" in error


def test_an_output_that_is_an_input_is_refused_before_anything_runs(good_cache, tmp_path, tiny_models, capsys):
    """Fails on the old code: `patch c.h5 --json c.h5` turned the cache into JSON with exit 0, and `train-dpo
    --model DIR -o DIR` replaced its base model."""
    cache = tmp_path / "cache.h5"
    shutil.copyfile(good_cache, cache)
    before = cache.read_bytes()
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    model = tmp_path / "model"
    shutil.copytree(tiny_models["llama"], model)
    for argv, said in [
        (["patch", str(cache), "--json", str(cache), "--set", "group:TP↓", "--no-save"], "--json"),
        (["train-dpo", "--model", str(model), "-o", str(model), "--pairs", str(pairs)], "--output"),
        (["train-dpo", "--model", str(model), "-o", str(tmp_path), "--pairs", str(pairs)], "--output"),
        (
            [
                "train-dpo",
                "--model",
                str(model),
                "--pairs",
                str(pairs),
                "-o",
                str(tmp_path / "out"),
                "--work-dir",
                str(model),
            ],
            "--work-dir",
        ),
        (["make-pairs", "--prompts", str(pairs), "-o", str(pairs)], "--output"),
    ]:
        code = main(argv)
        error = capsys.readouterr().err
        assert code == 2 and error.count("\n") == 1 and f"{said} " in error and "would overwrite" in error, argv
    assert cache.read_bytes() == before and (model / "config.json").exists()


def test_another_namespaces_temporary_is_left_alone(tmp_path):
    """A temporary whose pid is not alive here, written by another host or PID namespace (another writer tag), may
    belong to a live writer there: it is never swept. Fails on the old code, which judged by the pid alone."""
    from neuron_explorer.cache.atomic import sweep_stale_temporaries, temporary_path, writer_host

    other = tmp_path / f".cache.h5.h0000000000.{2**22 + 7}.tmp"
    other.write_bytes(b"a live writer elsewhere")
    legacy = tmp_path / f".cache.h5.{2**22 + 9}.tmp"  # no writer tag: cannot be judged either
    legacy.write_bytes(b"x")
    dead_here = temporary_path(tmp_path / "cache.h5", 2**22 + 11)
    dead_here.write_bytes(b"x")
    assert writer_host() != "h0000000000"
    assert sweep_stale_temporaries(tmp_path) == [dead_here]
    assert other.exists() and legacy.exists()


# -- markup, probes ----------------------------------------------------------------------------------------------
def test_user_text_is_not_read_as_markup(capsys):
    """Fails on the old code: rich raised MarkupError on `[/INST]` and `[/bold]`."""
    from neuron_explorer.commands.lab import show
    from neuron_explorer.commands.reporting import reporting
    from neuron_explorer.events import Progress

    runs = {
        name: {
            "toxicity": 0.5,
            "continuation": "[/INST] y [/bold]",
            "tokens": ["[/b]"],
            "lens": {"residual": [[0.0, 1.0]]},
        }
        for name in ("base", "dpo")
    }
    result = {
        "prompt": "[INST] x [/INST] y",
        "prompt_tokens": [1],
        "truncated": False,
        "scorer": "profanity",
        "protocol": {"new_tokens": 1, "positions": "generated"},
        "intervention": {"label": "[/bold] x", "neurons": 3, "positions": "all", "params": {}},
        "runs": runs,
        "totals": {"sum_positive": 0.0, "sum_negative": 0.0, "net": 0.0},
        "neurons": {key: [] for key in ("layer", "neuron", "contribution", "act_shift", "act_pre", "act_dpo")},
    }
    show(result, np.zeros((1, 1), dtype=np.int8))
    printed = capsys.readouterr().out
    assert "[INST] x [/INST] y" in printed and "[/bold] x" in printed and "[/INST] y [/bold]" in printed
    with reporting(json_lines=False) as report:
        report(Progress("[/bold] x: evaluating", 1, 2))


@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_a_probe_of_extreme_size_keeps_its_direction(tmp_path, scale):
    """Fails on the old code: the float32 norm of 1e20 everywhere overflowed to inf (unit vector all zeros, every
    cos and Δ 0), and 1e-30 underflowed to 0 (refused as zero)."""
    from neuron_explorer.engine.measure.probe import load_probe

    direction = np.full(32, scale, dtype=np.float32)
    direction[::2] *= -1
    np.save(tmp_path / "probe.npy", direction)
    probe = load_probe(tmp_path / "probe.npy", 32)
    expected = np.where(np.arange(32) % 2 == 0, -1.0, 1.0) / np.sqrt(32)  # by hand: ± entries of equal size
    np.testing.assert_allclose(probe.unit, expected, rtol=1e-6)
    assert np.isclose(probe.provenance()["norm"], float(np.float32(scale)) * np.sqrt(32), rtol=1e-6)


def test_a_zero_probe_is_still_refused(tmp_path):
    from neuron_explorer.engine.measure.probe import load_probe

    np.save(tmp_path / "probe.npy", np.zeros(32, dtype=np.float32))
    with pytest.raises(UserError, match="zero or not finite"):
        load_probe(tmp_path / "probe.npy", 32)


# -- options ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, said",
    [
        (["patch", "{cache}", "--set", "group:TP↓", "--mode", "scale", "--factor", "1e308", "--no-save"], "too large"),
        (["patch", "{cache}", "--set", "file:/dev/zero", "--mode", "zero-ablate", "--no-save"], "not a regular file"),
        (["patch", "{cache}", "--set", "file:{deep}", "--mode", "zero-ablate", "--no-save"], "nested too deeply"),
        (["lab", "{cache}", "--prompt", "x", "--set", "file:/dev/zero", "--mode", "zero-ablate"], "not a regular file"),
    ],
)
def test_hostile_options_are_one_line(good_cache, tmp_path, argv, said, capsys):
    """Fails on the old code: 1e308 passed the check (inf activations), /dev/zero was read until memory ran out,
    deep JSON raised RecursionError."""
    deep_file = tmp_path / "deep.json"
    deep_file.write_text(deep(100_000))
    cache = tmp_path / "cache.h5"
    shutil.copyfile(good_cache, cache)
    argv = [part.format(cache=cache, deep=deep_file) for part in argv]
    outcome = refused_in_a_thread(lambda: main(argv), seconds=120)
    error = capsys.readouterr().err
    assert outcome.get("value") == 2 and error.count("\n") == 1 and said in error, (outcome, error)


# -- prompt and pair files ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, said",
    [
        ('{"prompt": "a \\ud800 b"}\n', "line 1: holds a lone surrogate"),
        ("[" * 100_000 + "]" * 100_000 + "\n", "line 1: JSON nested too deeply"),
        (None, "not a regular file"),
    ],
)
def test_a_hostile_jsonl_file_is_one_line(tmp_path, content, said):
    """Fails on the old code: RecursionError, a FIFO read forever, and a lone surrogate accepted (it fails later,
    where the text is encoded)."""
    from neuron_explorer.engine.measure.jsonl import read_jsonl

    path = tmp_path / "prompts.jsonl"
    if content is None:
        os.mkfifo(path)
    else:
        path.write_text(content)
    outcome = refused_in_a_thread(lambda: read_jsonl(path, "prompt"))
    assert isinstance(outcome.get("error"), UserError) and said in str(outcome["error"]), outcome
    assert "\n" not in str(outcome["error"])


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_an_export_on_a_full_disk_keeps_the_older_export(good_cache, tmp_path, monkeypatch, suffix):
    """Fails on the old code: the export was written in place, so a full disk left half of it over the old one."""
    import errno

    import polars as pl

    from neuron_explorer.explorer.state import Store

    target = tmp_path / f"view{suffix}"
    target.write_text("the older export")
    method = "write_csv" if suffix == ".csv" else "write_parquet"

    def half_then_full(self, file, *args, **kwargs):
        open(file, "w").write("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pl.DataFrame, method, half_then_full)
    store = Store.open(good_cache)
    store.load_neurons()
    try:
        with pytest.raises(UserError, match="no space left to write") as refused:
            store.export(target)
    finally:
        store.reader.close()
    assert "\n" not in str(refused.value) and target.read_text() == "the older export"
    assert sorted(path.name for path in tmp_path.iterdir()) == [target.name]
