"""Every engine command in half precision (bfloat16, float16) on the tiny Llama pair: compute's identity check passes
within its dtype's tolerance and every stored number is finite, and patch, lab and evaluate run and report finite
numbers (sums in float64, nothing handed to numpy in a dtype it cannot read)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from neuron_explorer.cache.reader import CacheReader
from neuron_explorer.cli import main

pytestmark = pytest.mark.slow

PROMPTS = [
    "You are a stupid",
    "She walked to the market in the morning and",
    "What the hell",
    "The river runs",
    "I hate you because",
    "The quick brown fox jumps over",
    "My neighbour is a",
    "Shut up, you",
]


NOT_MEASURED = ("check_toxicity", "check_toxicity_sem")  # a patch run scores with the main scorer only


def finite(value, not_measured: tuple[str, ...] = NOT_MEASURED) -> bool:
    """True when every number in a JSON-like value is finite (the fields a run does not measure aside)."""
    if isinstance(value, dict):
        return all(finite(item, not_measured) for key, item in value.items() if key not in not_measured)
    if isinstance(value, list):
        return all(finite(item, not_measured) for item in value)
    return not isinstance(value, float) or math.isfinite(value)


@pytest.fixture(scope="module")
def files(pairs, tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    torch.save(torch.randn(32, generator=torch.Generator().manual_seed(3)), root / "probe.pt")
    base, tuned = pairs["llama"]
    return root, base, tuned


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_compute_patch_lab_and_evaluate_in_half_precision(files, dtype, capsys):
    root, base, tuned = files
    common = ["--device", "cpu", "--dtype", dtype]
    cache = root / f"{dtype}.h5"
    code = main(
        [
            "compute",
            "--base",
            str(base),
            "--tuned",
            str(tuned),
            "--probe",
            str(root / "probe.pt"),
            "--prompts",
            str(root / "prompts.txt"),
            "--new-tokens",
            "5",
            "--cluster-top-k",
            "40",
            "--clusters",
            "4",
            "-o",
            str(cache),
            *common,
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"({dtype}; passes at ≤" in err and err.count(": pass") == 2
    with CacheReader(cache) as reader:
        attrs = reader.attrs("layers")
        assert attrs["identity_dtype"] == dtype and attrs["identity_passed"] and attrs["pooling_passed"]
        assert attrs["identity_tolerance"] == max(8 * torch.finfo(getattr(torch, dtype)).eps / 2, 1e-4)
        frame = reader.neurons()
        for column in ("act_pre", "act_dpo", "p_pre", "contribution", "cos_pre"):
            assert np.isfinite(frame[column].to_numpy()).all(), column
        assert frame["contribution"].abs().max() > 0
        assert np.isfinite(reader.layers().drop("layer").to_numpy()).all()

    code = main(
        [
            "patch",
            str(cache),
            "--set",
            "group:TP↓",
            "--mode",
            "shift",
            "--max-prompts",
            "4",
            "--ppl-windows",
            "1",
            "--f1-items",
            "2",
            "--json",
            str(root / f"patch-{dtype}.json"),
            *common,
        ]
    )
    assert code == 0, capsys.readouterr().err
    record = json.loads((root / f"patch-{dtype}.json").read_text())
    assert finite(record)

    code = main(
        [
            "lab",
            str(cache),
            "--prompt",
            "You are a",
            "--set",
            "group:AN↓",
            "--mode",
            "shift",
            "--json",
            str(root / f"lab-{dtype}.json"),
            *common,
        ]
    )
    assert code == 0, capsys.readouterr().err
    answer = json.loads((root / f"lab-{dtype}.json").read_text())
    assert finite(answer) and len(answer["runs"]) == 3

    code = main(
        [
            "evaluate",
            str(base),
            str(tuned),
            "--prompts",
            str(root / "prompts.txt"),
            "--ppl-windows",
            "1",
            "--f1-items",
            "2",
            "--json",
            str(root / f"evaluate-{dtype}.json"),
            *common,
        ]
    )
    assert code == 0, capsys.readouterr().err
    evaluated = json.loads((root / f"evaluate-{dtype}.json").read_text())
    assert finite(evaluated, NOT_MEASURED + ("probe_projection",))  # evaluate is given no probe
