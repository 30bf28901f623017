"""Fault injection, bad inputs: every kind of bad input × every command that reads it gets one clean error line, a
non-zero exit, and leaves no file behind (issue #13 items 3, 4). The real command line runs in-process through
`neuron_explorer.cli.main` (fast), and a few cases through a real subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPTNeoConfig

from neuron_explorer.cli import main

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
CORPUS_TEXT = " ".join(["The river runs through the village under an old stone bridge built long ago."] * 40)
# Small settings, so that a case which (wrongly) got past its check would still end quickly.
FAST = {
    "compute": ["--device", "cpu", "--new-tokens", "2", "--cluster-top-k", "8", "--clusters", "2"],
    "evaluate": [
        "--device",
        "cpu",
        "--ppl-window",
        "16",
        "--ppl-windows",
        "1",
        "--f1-items",
        "1",
        "--check-scorer",
        "none",
    ],
    "make-pairs": ["--device", "cpu", "--samples", "1"],
    "train-probe": ["--device", "cpu", "--samples", "1"],
    "train-dpo": ["--device", "cpu", "--steps", "1", "--batch-size", "2"],
    "patch": [
        "--set",
        "all",
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
    ],
}


@pytest.fixture(scope="module")
def world(tiny_models, edited_copy, tmp_path_factory) -> dict[str, Path]:
    """Good inputs (a tiny model pair, a probe, prompts, a corpus, pairs, a real cache) and every kind of bad one."""
    root = tmp_path_factory.mktemp("bad-input")
    base = tiny_models["llama"]
    files = {"base": base, "tuned": edited_copy(base, root / "tuned", noise=0.02), "out": root / "out"}
    files["out"].mkdir()
    torch.save(torch.randn(32, generator=torch.Generator().manual_seed(3)), root / "probe.pt")
    files["probe"] = root / "probe.pt"
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    files["prompts"] = root / "prompts.txt"
    (root / "corpus.txt").write_text(CORPUS_TEXT)
    files["corpus"] = root / "corpus.txt"
    pairs = [{"prompt": p, "chosen": " a quiet walk.", "rejected": " you idiot."} for p in PROMPTS]
    (root / "pairs.jsonl").write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    files["pairs"] = root / "pairs.jsonl"
    # bad inputs
    files["missing.txt"] = root / "missing.txt"
    files["missing.jsonl"] = root / "missing.jsonl"
    (root / "latin1.txt").write_bytes("Ça va, café crème?\n".encode("latin-1") * 3)
    files["latin1.txt"] = root / "latin1.txt"
    (root / "latin1.jsonl").write_bytes(
        json.dumps(
            {"prompt": "café", "chosen": "é", "rejected": "è", "text": "ü", "scores": []}, ensure_ascii=False
        ).encode("latin-1")
        + b"\n"
    )
    files["latin1.jsonl"] = root / "latin1.jsonl"
    (root / "malformed.jsonl").write_text('{"prompt": "fine", "chosen": "a", "rejected": "b"}\n{"prompt": "cut sh\n')
    files["malformed.jsonl"] = root / "malformed.jsonl"
    (root / "empty.txt").write_text("")
    files["empty.txt"] = root / "empty.txt"
    (root / "empty.jsonl").write_text("")
    files["empty.jsonl"] = root / "empty.jsonl"
    torch.save(torch.randn(48), root / "wide-probe.pt")  # the tiny models' residual stream is 32 wide
    files["wide-probe.pt"] = root / "wide-probe.pt"
    state = {
        key: torch.zeros(value.shape[0] + 1, *value.shape[1:]) if value.dim() else value
        for key, value in _state_dict(base).items()
    }  # every key matches, every shape is off by one row
    torch.save(state, root / "reshaped.pt")
    files["reshaped.pt"] = root / "reshaped.pt"
    unknown = root / "gpt-neo"
    GPTNeoConfig(
        vocab_size=300,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        attention_types=[[["global"], 2]],
        max_position_embeddings=64,
    ).save_pretrained(unknown)
    files["unknown-architecture"] = unknown
    files["read-only"] = _read_only_folder(root)
    assert (
        main(
            [
                "compute",
                "--base",
                str(base),
                "--tuned",
                str(files["tuned"]),
                "--probe",
                str(files["probe"]),
                "--prompts",
                str(files["prompts"]),
                *FAST["compute"],
                "-o",
                str(root / "cache.h5"),
            ]
        )
        == 0
    )
    files["cache"] = root / "cache.h5"
    return files


def _state_dict(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _read_only_folder(root: Path) -> Path:
    """A folder no file can be created in: mode 0555, or for root (who ignores modes) a sysfs folder."""
    if os.geteuid() == 0:
        return Path("/sys/kernel")
    folder = root / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


# (case id, kind of input, argv template). `{name}` is replaced by the path of world[name]; each case also gets the
# command's FAST settings. Every command that reads an input of the kind is listed.
CASES = [
    # missing file
    (
        "compute-prompts-missing",
        "missing file",
        [
            "compute",
            "--base",
            "{base}",
            "--tuned",
            "{tuned}",
            "--probe",
            "{probe}",
            "--prompts",
            "{missing.txt}",
            "-o",
            "{out}/c.h5",
        ],
    ),
    (
        "compute-probe-missing",
        "missing file",
        [
            "compute",
            "--base",
            "{base}",
            "--tuned",
            "{tuned}",
            "--probe",
            "{missing.txt}.pt",
            "--prompts",
            "{prompts}",
            "-o",
            "{out}/c.h5",
        ],
    ),
    (
        "compute-model-missing",
        "missing file",
        [
            "compute",
            "--base",
            "{missing.txt}",
            "--tuned",
            "{tuned}",
            "--probe",
            "{probe}",
            "--prompts",
            "{prompts}",
            "-o",
            "{out}/c.h5",
        ],
    ),
    (
        "compute-state-dict-missing",
        "missing file",
        [
            "compute",
            "--base",
            "{base}",
            "--tuned",
            "{base}+{missing.txt}.pt",
            "--probe",
            "{probe}",
            "--prompts",
            "{prompts}",
            "-o",
            "{out}/c.h5",
        ],
    ),
    (
        "evaluate-prompts-missing",
        "missing file",
        ["evaluate", "{base}", "--prompts", "{missing.txt}", "--corpus", "{corpus}", "--json", "{out}/e.json"],
    ),
    (
        "evaluate-corpus-missing",
        "missing file",
        ["evaluate", "{base}", "--prompts", "{prompts}", "--corpus", "{missing.txt}", "--json", "{out}/e.json"],
    ),
    (
        "make-pairs-prompts-missing",
        "missing file",
        ["make-pairs", "--model", "{base}", "--prompts", "{missing.txt}", "-o", "{out}/p.jsonl"],
    ),
    (
        "train-probe-data-missing",
        "missing file",
        ["train-probe", "--model", "{base}", "--data", "{missing.txt}.csv", "-o", "{out}/p.safetensors"],
    ),
    (
        "train-probe-candidates-missing",
        "missing file",
        ["train-probe", "--model", "{base}", "--candidates", "{missing.jsonl}", "-o", "{out}/p.safetensors"],
    ),
    (
        "train-dpo-pairs-missing",
        "missing file",
        ["train-dpo", "--model", "{base}", "--pairs", "{missing.jsonl}", "-o", "{out}/tuned"],
    ),
    ("patch-cache-missing", "missing file", ["patch", "{missing.txt}.h5", "--base", "{base}"]),
    ("patch-prompts-missing", "missing file", ["patch", "{cache}", "--prompts", "{missing.txt}"]),
    # non-UTF-8 text and JSON lines
    (
        "compute-prompts-latin1-txt",
        "non-UTF-8 .txt",
        [
            "compute",
            "--base",
            "{base}",
            "--tuned",
            "{tuned}",
            "--probe",
            "{probe}",
            "--prompts",
            "{latin1.txt}",
            "-o",
            "{out}/c.h5",
        ],
    ),
    (
        "compute-prompts-latin1-jsonl",
        "non-UTF-8 .jsonl",
        [
            "compute",
            "--base",
            "{base}",
            "--tuned",
            "{tuned}",
            "--probe",
            "{probe}",
            "--prompts",
            "{latin1.jsonl}",
            "-o",
            "{out}/c.h5",
        ],
    ),
    (
        "evaluate-prompts-latin1-txt",
        "non-UTF-8 .txt",
        ["evaluate", "{base}", "--prompts", "{latin1.txt}", "--corpus", "{corpus}", "--json", "{out}/e.json"],
    ),
    (
        "evaluate-prompts-latin1-jsonl",
        "non-UTF-8 .jsonl",
        ["evaluate", "{base}", "--prompts", "{latin1.jsonl}", "--corpus", "{corpus}", "--json", "{out}/e.json"],
    ),
    (
        "evaluate-corpus-latin1-txt",
        "non-UTF-8 .txt",
        ["evaluate", "{base}", "--prompts", "{prompts}", "--corpus", "{latin1.txt}", "--json", "{out}/e.json"],
    ),
    (
        "evaluate-corpus-latin1-jsonl",
        "non-UTF-8 .jsonl",
        ["evaluate", "{base}", "--prompts", "{prompts}", "--corpus", "{latin1.jsonl}", "--json", "{out}/e.json"],
    ),
    (
        "make-pairs-prompts-latin1-txt",
        "non-UTF-8 .txt",
        ["make-pairs", "--model", "{base}", "--prompts", "{latin1.txt}", "-o", "{out}/p.jsonl"],
    ),
    (
        "make-pairs-prompts-latin1-jsonl",
        "non-UTF-8 .jsonl",
        ["make-pairs", "--model", "{base}", "--prompts", "{latin1.jsonl}", "-o", "{out}/p.jsonl"],
    ),
    (
        "train-probe-candidates-latin1",
        "non-UTF-8 .jsonl",
        ["train-probe", "--model", "{base}", "--candidates", "{latin1.jsonl}", "-o", "{out}/p.safetensors"],
    ),
    (
        "train-dpo-pairs-latin1",
        "non-UTF-8 .jsonl",
        ["train-dpo", "--model", "{base}", "--pairs", "{latin1.jsonl}", "-o", "{out}/tuned"],
    ),
    ("patch-prompts-latin1-txt", "non-UTF-8 .txt", ["patch", "{cache}", "--prompts", "{latin1.txt}"]),
    # malformed JSON lines
    (
        "compute-prompts-malformed",
        "malformed JSONL",
        [
            "compute",
            "--base",
            "{base}",
            "--tuned",
            "{tuned}",
            "--probe",
            "{probe}",
            "--prompts",
            "{malformed.jsonl}",
            "-o",
            "{out}/c.h5",
        ],
    ),
    (
        "evaluate-prompts-malformed",
        "malformed JSONL",
        ["evaluate", "{base}", "--prompts", "{malformed.jsonl}", "--corpus", "{corpus}", "--json", "{out}/e.json"],
    ),
    (
        "evaluate-corpus-malformed",
        "malformed JSONL",
        ["evaluate", "{base}", "--prompts", "{prompts}", "--corpus", "{malformed.jsonl}", "--json", "{out}/e.json"],
    ),
    (
        "make-pairs-prompts-malformed",
        "malformed JSONL",
        ["make-pairs", "--model", "{base}", "--prompts", "{malformed.jsonl}", "-o", "{out}/p.jsonl"],
    ),
    (
        "train-probe-candidates-malformed",
        "malformed JSONL",
        ["train-probe", "--model", "{base}", "--candidates", "{malformed.jsonl}", "-o", "{out}/p.safetensors"],
    ),
    (
        "train-dpo-pairs-malformed",
        "malformed JSONL",
        ["train-dpo", "--model", "{base}", "--pairs", "{malformed.jsonl}", "-o", "{out}/tuned"],
    ),
    ("patch-prompts-malformed", "malformed JSONL", ["patch", "{cache}", "--prompts", "{malformed.jsonl}"]),
    # empty file
    (
        "compute-prompts-empty",
        "empty file",
        [
            "compute",
            "--base",
            "{base}",
            "--tuned",
            "{tuned}",
            "--probe",
            "{probe}",
            "--prompts",
            "{empty.txt}",
            "-o",
            "{out}/c.h5",
        ],
    ),
    (
        "evaluate-prompts-empty",
        "empty file",
        ["evaluate", "{base}", "--prompts", "{empty.txt}", "--corpus", "{corpus}", "--json", "{out}/e.json"],
    ),
    (
        "evaluate-corpus-empty",
        "empty file",
        ["evaluate", "{base}", "--prompts", "{prompts}", "--corpus", "{empty.txt}", "--json", "{out}/e.json"],
    ),
    (
        "make-pairs-prompts-empty",
        "empty file",
        ["make-pairs", "--model", "{base}", "--prompts", "{empty.txt}", "-o", "{out}/p.jsonl"],
    ),
    (
        "train-probe-candidates-empty",
        "empty file",
        ["train-probe", "--model", "{base}", "--candidates", "{empty.jsonl}", "-o", "{out}/p.safetensors"],
    ),
    (
        "train-dpo-pairs-empty",
        "empty file",
        ["train-dpo", "--model", "{base}", "--pairs", "{empty.jsonl}", "-o", "{out}/tuned"],
    ),
    ("patch-prompts-empty", "empty file", ["patch", "{cache}", "--prompts", "{empty.txt}"]),
    # wrong-width probe
    (
        "compute-probe-width",
        "wrong-width probe",
        [
            "compute",
            "--base",
            "{base}",
            "--tuned",
            "{tuned}",
            "--probe",
            "{wide-probe.pt}",
            "--prompts",
            "{prompts}",
            "-o",
            "{out}/c.h5",
        ],
    ),
    (
        "make-pairs-probe-width",
        "wrong-width probe",
        [
            "make-pairs",
            "--model",
            "{base}",
            "--prompts",
            "{prompts}",
            "--method",
            "steer",
            "--probe",
            "{wide-probe.pt}",
            "-o",
            "{out}/p.jsonl",
        ],
    ),
    # a state dict whose keys match and shapes do not
    (
        "compute-state-dict-shapes",
        "state dict shapes",
        [
            "compute",
            "--base",
            "{base}",
            "--tuned",
            "{base}+{reshaped.pt}",
            "--probe",
            "{probe}",
            "--prompts",
            "{prompts}",
            "-o",
            "{out}/c.h5",
        ],
    ),
    (
        "evaluate-state-dict-shapes",
        "state dict shapes",
        [
            "evaluate",
            "{base}+{reshaped.pt}",
            "--prompts",
            "{prompts}",
            "--corpus",
            "{corpus}",
            "--json",
            "{out}/e.json",
        ],
    ),
    (
        "make-pairs-state-dict-shapes",
        "state dict shapes",
        ["make-pairs", "--model", "{base}+{reshaped.pt}", "--prompts", "{prompts}", "-o", "{out}/p.jsonl"],
    ),
    (
        "train-probe-state-dict-shapes",
        "state dict shapes",
        ["train-probe", "--model", "{base}+{reshaped.pt}", "--prompts", "{prompts}", "-o", "{out}/p.safetensors"],
    ),
    ("patch-state-dict-shapes", "state dict shapes", ["patch", "{cache}", "--tuned", "{base}+{reshaped.pt}"]),
    # unknown architecture
    (
        "compute-architecture",
        "unknown architecture",
        [
            "compute",
            "--base",
            "{unknown-architecture}",
            "--tuned",
            "{tuned}",
            "--probe",
            "{probe}",
            "--prompts",
            "{prompts}",
            "-o",
            "{out}/c.h5",
        ],
    ),
    (
        "evaluate-architecture",
        "unknown architecture",
        [
            "evaluate",
            "{unknown-architecture}",
            "--prompts",
            "{prompts}",
            "--corpus",
            "{corpus}",
            "--json",
            "{out}/e.json",
        ],
    ),
    (
        "make-pairs-architecture",
        "unknown architecture",
        ["make-pairs", "--model", "{unknown-architecture}", "--prompts", "{prompts}", "-o", "{out}/p.jsonl"],
    ),
    (
        "train-probe-architecture",
        "unknown architecture",
        ["train-probe", "--model", "{unknown-architecture}", "--prompts", "{prompts}", "-o", "{out}/p.safetensors"],
    ),
    ("patch-architecture", "unknown architecture", ["patch", "{cache}", "--base", "{unknown-architecture}"]),
    # an output location nothing can be written to
    (
        "compute-read-only",
        "read-only -o",
        [
            "compute",
            "--base",
            "{base}",
            "--tuned",
            "{tuned}",
            "--probe",
            "{probe}",
            "--prompts",
            "{prompts}",
            "-o",
            "{read-only}/c.h5",
        ],
    ),
    (
        "evaluate-read-only",
        "read-only -o",
        ["evaluate", "{base}", "--prompts", "{prompts}", "--corpus", "{corpus}", "--json", "{read-only}/e.json"],
    ),
    (
        "make-pairs-read-only",
        "read-only -o",
        ["make-pairs", "--model", "{base}", "--prompts", "{prompts}", "-o", "{read-only}/p.jsonl"],
    ),
    (
        "make-pairs-candidates-read-only",
        "read-only -o",
        [
            "make-pairs",
            "--model",
            "{base}",
            "--prompts",
            "{prompts}",
            "--candidates-out",
            "{read-only}/c.jsonl",
            "-o",
            "{out}/p.jsonl",
        ],
    ),
    (
        "train-probe-read-only",
        "read-only -o",
        ["train-probe", "--model", "{base}", "--prompts", "{prompts}", "-o", "{read-only}/p.safetensors"],
    ),
    (
        "train-dpo-read-only",
        "read-only -o",
        ["train-dpo", "--model", "{base}", "--pairs", "{pairs}", "-o", "{read-only}/tuned"],
    ),
    (
        "train-dpo-work-dir-read-only",
        "read-only -o",
        ["train-dpo", "--model", "{base}", "--pairs", "{pairs}", "-o", "{out}/tuned", "--work-dir", "{read-only}/work"],
    ),
    ("build-read-only", "read-only -o", ["build", "-o", "{read-only}/b.h5", "--work-dir", "{out}/build"]),
    ("build-work-dir-read-only", "read-only -o", ["build", "--work-dir", "{read-only}/build"]),
    ("patch-json-read-only", "read-only -o", ["patch", "{cache}", "--json", "{read-only}/runs.json"]),
    # counts: 0 where it is no count, -1 everywhere
    (
        "compute-max-prompts-0",
        "bad count",
        [
            "compute",
            "--base",
            "{base}",
            "--tuned",
            "{tuned}",
            "--probe",
            "{probe}",
            "--prompts",
            "{prompts}",
            "--max-prompts",
            "0",
            "-o",
            "{out}/c.h5",
        ],
    ),
    (
        "compute-max-prompts--1",
        "bad count",
        [
            "compute",
            "--base",
            "{base}",
            "--tuned",
            "{tuned}",
            "--probe",
            "{probe}",
            "--prompts",
            "{prompts}",
            "--max-prompts",
            "-1",
            "-o",
            "{out}/c.h5",
        ],
    ),
    (
        "compute-batch-size-0",
        "bad count",
        [
            "compute",
            "--base",
            "{base}",
            "--tuned",
            "{tuned}",
            "--probe",
            "{probe}",
            "--prompts",
            "{prompts}",
            "--batch-size",
            "0",
            "-o",
            "{out}/c.h5",
        ],
    ),
    (
        "evaluate-max-prompts-0",
        "bad count",
        [
            "evaluate",
            "{base}",
            "--prompts",
            "{prompts}",
            "--corpus",
            "{corpus}",
            "--max-prompts",
            "0",
            "--json",
            "{out}/e.json",
        ],
    ),
    (
        "evaluate-max-prompts--1",
        "bad count",
        [
            "evaluate",
            "{base}",
            "--prompts",
            "{prompts}",
            "--corpus",
            "{corpus}",
            "--max-prompts",
            "-1",
            "--json",
            "{out}/e.json",
        ],
    ),
    (
        "evaluate-ppl-windows--1",
        "bad count",
        [
            "evaluate",
            "{base}",
            "--prompts",
            "{prompts}",
            "--corpus",
            "{corpus}",
            "--ppl-windows",
            "-1",
            "--json",
            "{out}/e.json",
        ],
    ),
    (
        "make-pairs-max-prompts-0",
        "bad count",
        ["make-pairs", "--model", "{base}", "--prompts", "{prompts}", "--max-prompts", "0", "-o", "{out}/p.jsonl"],
    ),
    (
        "make-pairs-max-prompts--1",
        "bad count",
        ["make-pairs", "--model", "{base}", "--prompts", "{prompts}", "--max-prompts", "-1", "-o", "{out}/p.jsonl"],
    ),
    (
        "make-pairs-samples-0",
        "bad count",
        ["make-pairs", "--model", "{base}", "--prompts", "{prompts}", "--samples", "0", "-o", "{out}/p.jsonl"],
    ),
    (
        "train-probe-max-rows-0",
        "bad count",
        ["train-probe", "--model", "{base}", "--data", "{prompts}", "--max-rows", "0", "-o", "{out}/p.safetensors"],
    ),
    (
        "train-probe-samples-0",
        "bad count",
        ["train-probe", "--model", "{base}", "--prompts", "{prompts}", "--samples", "0", "-o", "{out}/p.safetensors"],
    ),
    (
        "train-dpo-steps-0",
        "bad count",
        ["train-dpo", "--model", "{base}", "--pairs", "{pairs}", "-o", "{out}/tuned", "--steps", "0"],
    ),
    (
        "train-dpo-save-steps--1",
        "bad count",
        ["train-dpo", "--model", "{base}", "--pairs", "{pairs}", "-o", "{out}/tuned", "--save-steps", "-1"],
    ),
    ("build-steps-0", "bad count", ["build", "--work-dir", "{out}/build", "--steps", "0"]),
    ("build-samples--1", "bad count", ["build", "--work-dir", "{out}/build", "--samples", "-1"]),
    ("patch-max-prompts--1", "bad count", ["patch", "{cache}", "--max-prompts", "-1"]),
    ("patch-batch-size-0", "bad count", ["patch", "{cache}", "--batch-size", "0"]),
]


def argv_for(template: list[str], world: dict[str, Path]) -> list[str]:
    argv = [re.sub(r"\{([^}]+)\}", lambda name: str(world[name[1]]), part) for part in template]
    fast = FAST.get(argv[0], [])
    extra = [
        part
        for option, value in zip(fast[::2], fast[1::2])
        if option not in argv  # the case's own value wins
        for part in (option, value)
    ]
    return [*argv, *extra]


def tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def assert_one_line_error(code, stderr: str) -> None:
    assert code not in (0, None), f"exit status {code}"
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, f"expected one error line, got:\n{stderr}"
    assert stderr.rstrip().splitlines()[-1] == errors[0], f"the error is not the last word:\n{stderr}"
    assert errors[0].startswith("neuron-explorer"), errors[0]


def run_in_process(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own error
        code = exit.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("template", [case[2] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_gets_one_error_line_and_writes_nothing(template, world, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("NEURON_EXPLORER_HOME", str(tmp_path / "home"))  # the embedded default is never touched
    root = world["cache"].parent
    before = tree(root)
    code, stderr = run_in_process(argv_for(template, world), capsys)
    assert_one_line_error(code, stderr)
    assert tree(root) == before, f"files appeared: {sorted(tree(root) - before)}"
    assert not (tmp_path / "home").exists()


def test_the_table_covers_every_kind_and_command():
    kinds = {case[1] for case in CASES}
    assert kinds == {
        "missing file",
        "non-UTF-8 .txt",
        "non-UTF-8 .jsonl",
        "malformed JSONL",
        "empty file",
        "wrong-width probe",
        "state dict shapes",
        "unknown architecture",
        "read-only -o",
        "bad count",
    }
    commands = {case[2][0] for case in CASES}
    assert commands == {"compute", "evaluate", "make-pairs", "train-probe", "train-dpo", "patch", "build"}


SUBPROCESS_CASES = [
    "compute-prompts-latin1-txt",
    "compute-read-only",
    "evaluate-max-prompts-0",
    "compute-state-dict-shapes",
]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
@pytest.mark.slow  # a real process: the fast lane (pytest -m 'not slow') skips it
def test_bad_input_in_a_real_process(name, world, tmp_path):
    template = next(case[2] for case in CASES if case[0] == name)
    root = world["cache"].parent
    before = tree(root)
    environment = {**os.environ, "NEURON_EXPLORER_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "neuron_explorer", *argv_for(template, world)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert_one_line_error(done.returncode, done.stderr)
    assert tree(root) == before


def test_patch_no_save_does_not_claim_stored_runs(world, capsys, tmp_path):
    """Issue #13 item 6: `patch --no-save` printed "runs stored in …" and stored none."""
    cache = tmp_path / "cache.h5"
    cache.write_bytes(world["cache"].read_bytes())
    assert main(["patch", str(cache), "--no-save", *FAST["patch"]]) == 0
    printed = capsys.readouterr()
    assert "runs stored in" not in printed.out + printed.err
    assert "not stored" in printed.out + printed.err
    runs = cache.with_name(cache.name + ".annotations") / "runs"
    assert not runs.exists() or not any(runs.iterdir())
