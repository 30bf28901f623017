"""The value-vector lens costs what the user needs: the rule that picks all or the top neurons, the partial lens
against the whole one, the cache's record of it, and the lab worker's tokens on demand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuron_explorer.cache.reader import CacheReader
from neuron_explorer.engine.lab.protocol import TokensRequest, parse_request
from neuron_explorer.engine.lab.session import LabSession
from neuron_explorer.engine.model import weights
from neuron_explorer.engine.model.loading import load_model
from neuron_explorer.errors import UserError


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Tiny models (tests/conftest.py: one_torch_thread)."""


SHAPES = {  # name: (n_layers, d_mlp, vocab, d_model)
    "embedded": (30, 1536, 49152, 576),
    "llama-1b": (16, 8192, 128256, 2048),
    "llama-8b": (32, 14336, 128256, 4096),
    "tiny": (3, 64, 1000, 32),
}


@pytest.mark.parametrize(
    "shape, device, whole",
    [
        ("tiny", "cpu", True),
        ("embedded", "cpu", False),
        ("llama-1b", "cpu", False),
        ("embedded", "cuda", True),
        ("llama-8b", "cuda:0", True),
    ],
)
def test_auto_takes_the_whole_lens_where_it_is_cheap(shape, device, whole):
    n_layers, d_mlp, vocab, d_model = SHAPES[shape]
    rule = weights.lens_rule(
        "auto", device=device, n_layers=n_layers, d_mlp=d_mlp, vocab=vocab, d_model=d_model, memo_complete=False
    )
    assert (rule.top_n is None) == whole


def test_asked_for_and_remembered_lenses_are_whole():
    size = dict(device="cpu", n_layers=32, d_mlp=14336, vocab=128256, d_model=4096)
    assert weights.lens_rule("auto", memo_complete=True, **size).top_n is None
    assert weights.lens_rule("all", memo_complete=False, **size).top_n is None
    assert weights.lens_rule("7", memo_complete=False, **size).top_n == 7
    with pytest.raises(UserError):
        weights.lens_rule("some", memo_complete=False, **size)


def test_the_rule_takes_the_union_of_each_rankings_top():
    zeros = np.zeros((2, 4))
    metrics = {"contribution": zeros.copy(), "act_shift": zeros.copy(), "cos_pre": zeros.copy()}
    metrics["contribution"][1, 3], metrics["contribution"][0, 0] = -5.0, 4.0  # magnitude counts, not sign
    metrics["act_shift"][0, 2], metrics["act_shift"][1, 3] = 3.0, 2.0
    metrics["cos_pre"][1, 1], metrics["cos_pre"][0, 1] = -0.9, 0.1
    chosen = weights.LensRule(1, "test").neurons(metrics)
    assert sorted(zip(*np.nonzero(chosen))) == [(0, 2), (1, 1), (1, 3)]
    assert weights.LensRule(None, "test").neurons(metrics) is None


def test_a_partial_lens_equals_the_whole_on_its_neurons_and_is_not_remembered(pairs, tmp_path):
    loaded = load_model(str(pairs["llama"][0]), device="cpu", dtype="float32")
    whole = weights.value_tokens(loaded, k=4)
    chosen = np.zeros(whole["top_tokens"].shape[:2], dtype=bool)
    chosen[0, [1, 5]] = chosen[2, 7] = True
    chosen[1] = True  # a whole layer is computed whole, and remembered
    memo = tmp_path / "memo"
    partial = weights.value_tokens(loaded, k=4, neurons=chosen, memo=memo, chunk=1)
    for name in weights.LENS_FIELDS:  # scores to float32's rounding: another chunking sums in another order
        np.testing.assert_allclose(partial[name][chosen], whole[name][chosen], rtol=1e-5)
    assert (partial["top_tokens"][~chosen] == -1).all() and np.isnan(partial["top_scores"][~chosen]).all()
    assert sorted(path.name for path in memo.iterdir()) == ["layer-1-k4.npz"]
    picked = weights.neuron_tokens(loaded, [(2, 7), (0, 5), (0, 1)], k=4)
    for name in weights.LENS_FIELDS:
        np.testing.assert_allclose(picked[name], whole[name][[2, 0, 0], [7, 5, 1]], rtol=1e-5)


@pytest.fixture
def partial_cache(pairs, compute_cache, isolated_home):
    """Top 5 by each ranking; an empty logit-lens memo (a remembered layer would be read whole)."""
    return compute_cache(*pairs["llama"], "partial-lens.h5", lens="5")


def test_compute_stores_the_rule_and_the_lab_worker_computes_the_rest(partial_cache, tiny_cache):
    with CacheReader(tiny_cache) as whole, CacheReader(partial_cache) as partial:
        assert whole.lens_rule()["rule"] == "all"
        rule = partial.lens_rule()
        assert rule["rule"] == "top" and rule["top_n"] == 5 and 5 <= rule["computed"] <= 15
        stored = partial.file["neurons/top_tokens_pre"][:, :, 0] >= 0
        assert stored.sum() == rule["computed"]
        layer, neuron = map(int, np.argwhere(stored)[0])
        missing = tuple(map(int, np.argwhere(~stored)[0]))
        frame, reference = partial.top_tokens(layer, neuron), whole.top_tokens(layer, neuron)
        assert frame["token"].to_list() == reference["token"].to_list()
        np.testing.assert_allclose(frame["score"].to_numpy(), reference["score"].to_numpy(), rtol=1e-5)
        assert partial.top_tokens(*missing).height == 0
        expected = whole.top_tokens(*missing)
    request = parse_request(json.dumps({"request": "tokens", "id": 9, "neurons": [list(missing)]}))
    assert request == TokensRequest(9, (missing,))
    with LabSession(partial_cache, device="cpu", dtype="float32") as session:
        answer = session.value_tokens(request).to_dict()
    assert answer["id"] == 9 and answer["neurons"] == [list(missing)]
    for model, name in (("base", "pre"), ("dpo", "dpo")):
        for direction in ("top", "bottom"):
            rows = expected.filter((expected["model"] == name) & (expected["direction"] == direction))
            assert answer[model][f"{direction}_tokens"][0] == rows["token"].to_list()
            np.testing.assert_allclose(answer[model][f"{direction}_scores"][0], rows["score"].to_numpy(), rtol=1e-5)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"request": "tokens", "id": 1}', "non-empty list"),
        ('{"request": "tokens", "id": 1, "neurons": [[1, -2]]}', "non-empty list"),
        ('{"request": "tokens", "id": 1, "neurons": [[1, 2]], "top": 3}', "takes no top"),
    ],
)
def test_bad_tokens_requests_are_one_line_errors(line, message):
    with pytest.raises(UserError, match=message):
        parse_request(line)


def test_the_detail_screen_says_why_a_neuron_has_no_tokens(partial_cache):
    from neuron_explorer.explorer.screens.detail import tokens_table

    with CacheReader(partial_cache) as reader:
        rule = reader.lens_rule()
        missing = tuple(map(int, np.argwhere(reader.file["neurons/top_tokens_pre"][:, :, 0] < 0)[0]))
        shown = tokens_table(reader.top_tokens(*missing), rule)
    assert "not computed for this neuron" in shown.plain and "top 5" in shown.plain


def test_lab_tokens_prints_a_left_out_neurons_tokens(partial_cache, capsys):
    from neuron_explorer.cli import main

    with CacheReader(partial_cache) as reader:
        missing = tuple(map(int, np.argwhere(reader.file["neurons/top_tokens_pre"][:, :, 0] < 0)[0]))
    with LabSession(partial_cache, device="cpu", dtype="float32") as session:
        expected = session.value_tokens(TokensRequest(1, (missing,))).to_dict()
    assert main(["lab", str(partial_cache), "--tokens", f"{missing[0]}:{missing[1]}", "--device", "cpu"]) == 0
    shown = capsys.readouterr().out
    assert f"L{missing[0]}/N{missing[1]}" in shown
    assert f"{expected['dpo']['bottom_scores'][0][0]:+.2f}" in shown
    assert main(["lab", str(partial_cache), "--tokens", "3-4"]) == 2
    assert "LAYER:NEURON" in capsys.readouterr().err
