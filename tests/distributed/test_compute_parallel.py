"""`torchrun -m neuron_explorer compute` in 2 processes writes the cache that one process writes, and a failing rank
stops the run with one error and no file."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from .conftest import HERE, run_command

pytestmark = pytest.mark.slow


def compute_args(workspace, kind: str, output, *extra: str) -> list[str]:
    return [
        "compute",
        "--base",
        str(workspace[f"{kind}_base"]),
        "--tuned",
        str(workspace[f"{kind}_tuned"]),
        "--probe",
        str(workspace["probe"]),
        "--prompts",
        str(workspace["prompts"]),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--new-tokens",
        "5",
        "--cluster-top-k",
        "40",
        "--clusters",
        "4",
        "--batch-size",
        "3",
        "-o",
        str(output),
        *extra,
    ]


def datasets(file: h5py.File) -> dict[str, np.ndarray]:
    found = {}
    file.visititems(lambda name, item: found.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return found


# Per-layer residuals are differences of nearly equal sums: the order of float64 additions shows there.
DIFFERENCES = ("layers/residual_pre", "layers/residual_dpo", "layers/change_residual")


@pytest.mark.parametrize("kind, extra", [("llama", ()), ("gpt2", ("--shared-continuation", "--positions", "all"))])
def test_two_processes_write_the_cache_of_one(workspace, kind, extra, tmp_path):
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    single = run_command(compute_args(workspace, kind, one, *extra))
    assert single.returncode == 0, single.stderr
    parallel = run_command(compute_args(workspace, kind, two, *extra), processes=2)
    assert parallel.returncode == 0, parallel.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.h5", "two.h5"]  # one file, no rank's leftovers
    with h5py.File(one, "r", locking=False) as a, h5py.File(two, "r", locking=False) as b:
        expected, actual = datasets(a), datasets(b)
        assert expected.keys() == actual.keys()
        assert len(expected["prompts/text"]) == 12 and len(expected["prompt_acts/pre"]) == 12
        for name, value in expected.items():
            if value.dtype.kind == "f":
                tolerance = dict(rtol=1e-6, atol=1e-12) if name in DIFFERENCES else dict(rtol=1e-6, atol=0)
                np.testing.assert_allclose(actual[name], value, err_msg=name, **tolerance)
            else:
                np.testing.assert_array_equal(actual[name], value, err_msg=name)
        assert a["neurons/group"].size and np.unique(a["neurons/group"][()]).size > 1
        for group in ("", "layers"):
            attrs_a, attrs_b = dict(a[group or "/"].attrs), dict(b[group or "/"].attrs)
            for key in set(attrs_a) - {"provenance", "created"}:
                assert str(attrs_b[key]) == str(attrs_a[key]), key
        distributed = json.loads(b.attrs["provenance"])["distributed"]
        assert distributed["world_size"] == 2 and distributed["backend"] == "gloo"
        assert "round-robin" in distributed["sharding"]
        assert json.loads(a.attrs["provenance"])["distributed"]["world_size"] == 1


def test_a_batch_counted_twice_by_one_rank_fails_the_pooling_check(workspace, tmp_path):
    """The totals are all-reduced, the per-prompt means gathered to rank 0: a rank that counts a batch twice makes
    the published ā disagree with the means written for its prompts, which the check reports and the exit code says."""
    output = tmp_path / "cache.h5"
    result = run_command(compute_args(workspace, "llama", output), processes=2, script=HERE / "double_counting_rank.py")
    assert result.returncode == 1, result.stderr
    assert "per-prompt means of every prompt" in result.stderr and ": FAIL" in result.stderr, result.stderr
    with h5py.File(output, "r", locking=False) as file:
        attrs = file["layers"].attrs
        assert not attrs["pooling_passed"] and attrs["pooling_relative"] > 1e-3
        assert attrs["identity_passed"]  # the sample's own means are right: the old check alone saw nothing


def test_a_failing_rank_stops_every_rank_with_one_error_and_no_file(workspace, tmp_path):
    output = tmp_path / "cache.h5"
    result = run_command(compute_args(workspace, "llama", output), processes=2, script=HERE / "failing_rank.py")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("neuron-explorer: error:")]
    assert errors, result.stderr
    assert sum("rank 1 lost its device" in line for line in errors) == 1, errors
    assert all(
        "rank 1 lost its device" in line or "another process of this torchrun failed" in line for line in errors
    ), errors
    ours = [line for line in result.stderr.splitlines() if 'File "' in line and "neuron_explorer" in line]
    assert not ours, ours  # no traceback from our processes (torchrun prints its own report after them)
    assert list(tmp_path.iterdir()) == []  # neither the cache nor a temporary
