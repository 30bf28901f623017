"""The group boundaries, the v1 and v3 share tables and the v2 top-toxic share, on hand-built neuron tables whose
answers are known: the published GPT-2 group sums of METHOD §3, a net Σ Δ of (nearly) zero, and tables built
neuron by neuron so that every count and sum can be read off by hand."""

from __future__ import annotations

import numpy as np
import pytest

from neuron_explorer.cache import schema
from neuron_explorer.engine.neurons.statistics import assign_groups, neuron_metrics, summarize, top_toxic_share
from neuron_explorer.engine.neurons.synthetic import build_synthetic_cache

# Yang v1 on GPT-2 medium (METHOD §3): each group's Σ Δ, the v1 shares as printed in the paper, and the mirror
# groups' shares of their own sum (−2.054, −14.372, −14.633, −9.208 over −40.267), worked out by hand.
GPT2_SUMS = {
    "TP↓": 15.111,
    "TN↓": 11.336,
    "AP↓": 3.320,
    "AN↓": 17.717,
    "TP↑": -2.054,
    "TN↑": -14.372,
    "AP↑": -14.633,
    "AN↑": -9.208,
}
GPT2_V1_PERCENT = {"TP↓": 31.8, "TN↓": 23.9, "AP↓": 7.0, "AN↓": 37.3, "TP↑": 5.1, "TN↑": 35.7, "AP↑": 36.3, "AN↑": 22.9}


def table(rows) -> dict:
    """Neuron metrics (one layer) from rows of (cos_pre, ā_pre, ā_dpo, p_pre[, p_dpo]); p_dpo defaults to p_pre."""
    cos, act_pre, act_dpo, p_pre, p_dpo = (
        np.array(column, dtype=np.float64)[None]
        for column in zip(*(row if len(row) == 5 else (*row, row[3]) for row in rows))
    )
    return neuron_metrics(
        p_pre=p_pre,
        p_dpo=p_dpo,
        cos_pre=cos,
        cos_dpo=cos,
        value_cos=np.ones_like(cos),
        act_pre=act_pre,
        act_dpo=act_dpo,
    )


def neuron(sign_class: str, delta: float, p: float = 1.0, act_pre: float = 2.0) -> tuple:
    """A neuron of the sign class whose Δ is `delta` with unchanged weights: Δ = p·δ, so δ = Δ / p."""
    toxic, positive = sign_class[0] == "T", sign_class[1] == "P"
    p = p if toxic else -p
    a_pre = act_pre if positive else -act_pre
    return (0.3 if toxic else -0.3, a_pre, a_pre - delta / p, p)


def row(tab: dict, name: str) -> dict:
    i = tab["group"].index(name)
    return {key: value[i] for key, value in tab.items() if key != "group"}


# The rest of METHOD §2–§3 on GPT-2 medium: 98,304 neurons, 57,501 of them with Δ > 0 summing to +47.963 (the
# v3 denominator; v1's four ↓ groups sum to 47.484 because value vectors turned too), the v2 top-128 share
# 2.333 / 47.963 = 4.9%, and v3 shares 32/24/7/37.
GPT2_NEURONS, GPT2_POSITIVE, GPT2_V2_SUM = 24 * 4096, 57_501, 2.333
GPT2_V3_PERCENT = {"TP↓": 32, "TN↓": 24, "AP↓": 7, "AN↓": 37}


def written(sign_class: str, reducing: bool, delta: float, cos: float) -> tuple:
    """(cos, ā_pre, ā_dpo, p_pre, p_dpo) of one neuron of `sign_class` whose activation moves the `reducing` way
    (v1's group) and whose Δ is `delta`: the value vector is solved for, so a neuron of a mirror group (activation
    moved the wrong way) can still have Δ > 0 because DPO shrank its value vector along the probe."""
    toxic, positive = sign_class[0] == "T", sign_class[1] == "P"
    p_pre, a_pre = (1.0 if toxic else -1.0), (2.0 if positive else -2.0)
    a_dpo = a_pre - (0.5 if toxic == reducing else -0.5)  # TP/TN reduce when ā falls, AP/AN when it rises
    return (cos, a_pre, a_dpo, p_pre, (a_pre * p_pre - delta) / a_dpo)


@pytest.fixture(scope="module")
def gpt2_neurons() -> list[tuple]:
    """GPT-2 medium's published figures as 98,304 individual neurons, from batches of (sign class, reducing?,
    count, Σ Δ, among the 128 largest cosines?), each batch split evenly. Reducing batches keep their value vectors,
    so their Δ has the sign of the change; the 'turned' mirror batches have Δ > 0 (v3 counts them, v1 does not).
    The 128 largest cosines: 40 TP↓ neurons (the v2 kept set), 30 TN↓ (ā_pre < 0: not kept), 30 turned TP↑ and
    28 TP↑ (δ < 0: not kept)."""
    turned = {"TP": 0.239, "TN": 0.174, "AP": 0.040, "AN": 0.026}  # v3 sums − v1 sums: 15.350, 11.510, 3.360, 17.743
    batches = [
        ("TP", True, 40, GPT2_V2_SUM, True),
        ("TN", True, 30, 1.5, True),
        ("TP", False, 30, turned["TP"], True),
        ("TP", False, 28, -1.4, True),
        ("TP", True, 14_000, GPT2_SUMS["TP↓"] - GPT2_V2_SUM, False),
        ("TN", True, 11_000, GPT2_SUMS["TN↓"] - 1.5, False),
        ("AP", True, 4_000, GPT2_SUMS["AP↓"], False),
        ("AN", True, 28_381, GPT2_SUMS["AN↓"], False),
        ("TN", False, 10, turned["TN"], False),
        ("AP", False, 5, turned["AP"], False),
        ("AN", False, 5, turned["AN"], False),
        ("TP", False, 2_000, GPT2_SUMS["TP↑"] - turned["TP"] + 1.4, False),
        ("TN", False, 14_000, GPT2_SUMS["TN↑"] - turned["TN"], False),
        ("AP", False, 14_000, GPT2_SUMS["AP↑"] - turned["AP"], False),
        ("AN", False, 10_775, GPT2_SUMS["AN↑"] - turned["AN"], False),
    ]
    rng = np.random.default_rng(5)
    neurons = []
    for sign_class, reducing, count, total, top in batches:
        for _ in range(count):
            cos = 0.9 + 0.09 * rng.random() if top else 0.01 + 0.49 * rng.random()
            neurons.append(written(sign_class, reducing, total / count, cos if sign_class[0] == "T" else -cos))
    rng.shuffle(neurons)
    return neurons


def test_the_published_gpt2_figures_follow_from_the_neurons(gpt2_neurons):
    cos, act_pre, act_dpo, p_pre, p_dpo = (
        np.array(column, dtype=np.float64).reshape(24, 4096) for column in zip(*gpt2_neurons)
    )
    tab, scalars = summarize(
        neuron_metrics(
            p_pre=p_pre,
            p_dpo=p_dpo,
            cos_pre=cos,
            cos_dpo=cos,
            value_cos=np.ones_like(cos),
            act_pre=act_pre,
            act_dpo=act_dpo,
        )
    )
    # the published figures (METHOD §2–§3), each to its printed precision
    for name, percent in GPT2_V1_PERCENT.items():
        assert round(100 * row(tab, name)["share_v1"], 1) == percent, name
    for name, percent in GPT2_V3_PERCENT.items():
        assert round(100 * row(tab, name)["share_v3"]) == percent, name
    assert (scalars["n_neurons"], scalars["n_positive"]) == (GPT2_NEURONS, GPT2_POSITIVE)
    assert round(scalars["sum_positive_contribution"], 2) == 47.96 and round(scalars["net_contribution"], 2) == 7.22
    assert round(100 * scalars["top_toxic_share"], 1) == 4.9 and scalars["top_toxic_kept"] == 40
    # every entry against a plain loop over the neurons, with the group rules of METHOD §3 written out here
    v1 = {name: [] for name in schema.GROUP_NAMES}
    v3 = {name: [] for name in schema.GROUP_NAMES}
    for c, a_pre, a_dpo, pp, pd in gpt2_neurons:
        delta = a_pre * pp - a_dpo * pd
        sign_class = ("T" if c > 0 else "A") + ("P" if a_pre > 0 else "N")
        reducing = (a_pre - a_dpo > 0) if c > 0 else (a_pre - a_dpo < 0)
        v1[sign_class + ("↓" if reducing else "↑")].append(delta)
        if delta != 0:
            v3[sign_class + ("↓" if delta > 0 else "↑")].append(delta)
    totals = {
        True: (sum(sum(v1[n]) for n in schema.REDUCING_GROUPS), sum(sum(v3[n]) for n in schema.REDUCING_GROUPS)),
        False: (sum(sum(v1[n]) for n in schema.MIRROR_GROUPS), sum(sum(v3[n]) for n in schema.MIRROR_GROUPS)),
    }
    for name in schema.GROUP_NAMES:
        v1_total, v3_total = totals[name in schema.REDUCING_GROUPS]
        found = row(tab, name)
        assert (found["count"], found["count_v3"]) == (len(v1[name]), len(v3[name])), name
        assert found["sum_contribution"] == pytest.approx(sum(v1[name]), abs=1e-4), name
        assert found["share_v1"] == pytest.approx(sum(v1[name]) / v1_total, abs=1e-5), name
        assert found["share_v3"] == pytest.approx(sum(v3[name]) / v3_total, abs=1e-5), name
    assert scalars["n_positive"] == sum(len(v3[name]) for name in schema.REDUCING_GROUPS)
    top = sorted(range(len(gpt2_neurons)), key=lambda i: -gpt2_neurons[i][0])[:128]
    kept = [gpt2_neurons[i] for i in top if 0 < gpt2_neurons[i][1] and gpt2_neurons[i][2] < gpt2_neurons[i][1]]
    kept_sum = sum(a_pre * pp - a_dpo * pd for _, a_pre, a_dpo, pp, pd in kept)
    assert len(kept) == 40 and scalars["top_toxic_sum"] == pytest.approx(kept_sum, abs=1e-5)
    assert scalars["top_toxic_share"] == pytest.approx(kept_sum / totals[True][1], abs=1e-6)


@pytest.mark.parametrize(
    "mirror_an", [-6.0, -6.0 + 2.0**-20, -6.0 - 2.0**-20], ids=["net zero", "net +1e-6", "net -1e-6"]
)
def test_v1_shares_stay_finite_when_the_net_is_near_zero(mirror_an):
    """Reducing 2.5 + 7.5 against mirrors 4 + (6 ± 2⁻²⁰): over the net the shares were 0, ±2.6e6 or flipped."""
    tab, scalars = summarize(table([neuron("TP", 2.5), neuron("AN", 7.5), neuron("TN", -4.0), neuron("AN", mirror_an)]))
    assert abs(scalars["net_contribution"]) <= 2.0**-20
    expected = {
        "TP↓": 0.25,
        "AN↓": 0.75,
        "TN↑": 4 / (10 - 6 - mirror_an),
        "AN↑": (-mirror_an) / (10 - 6 - mirror_an),
        "TN↓": 0.0,
        "AP↓": 0.0,
        "TP↑": 0.0,
        "AP↑": 0.0,
    }
    for name, share in expected.items():
        assert row(tab, name)["share_v1"] == pytest.approx(share, abs=1e-7), name


@pytest.mark.parametrize(
    "cos, act_pre, shift, group",
    [
        (0.2, 1.0, 0.5, "TP↓"),
        (0.2, 1.0, -0.5, "TP↑"),
        (0.2, 1.0, 0.0, "TP↑"),
        (0.2, -1.0, 0.5, "TN↓"),
        (0.2, 0.0, 0.5, "TN↓"),
        (0.2, 0.0, 0.0, "TN↑"),
        (0.2, -1.0, -0.5, "TN↑"),
        (-0.2, 1.0, -0.5, "AP↓"),
        (0.0, 1.0, -0.5, "AP↓"),
        (0.0, 1.0, 0.0, "AP↑"),
        (-0.2, 1.0, 0.5, "AP↑"),
        (-0.2, -1.0, -0.5, "AN↓"),
        (0.0, 0.0, -0.5, "AN↓"),
        (0.0, 0.0, 0.0, "AN↑"),
        (-0.2, -1.0, 0.5, "AN↑"),
        (1e-30, 1e-30, 1e-30, "TP↓"),
        (-1e-30, 1e-30, -1e-30, "AP↓"),
    ],
)
def test_group_boundaries(cos, act_pre, shift, group):
    """cos = 0 is anti-toxic, ā_pre = 0 is negatively activated, δ = 0 reduces nothing (METHOD §3)."""
    code = assign_groups(np.array([cos]), np.array([act_pre]), np.array([shift]))[0]
    assert schema.GROUP_NAMES[code] == group


def test_v1_and_v3_definitions_differ_when_a_value_vector_turns():
    """v1 groups by the sign of δ; v3 keeps Δ > 0 (Δ < 0 on ↑ rows) by sign class. A TP neuron whose activation fell
    (δ > 0, v1 TP↓) but whose value vector grew along the probe writes more toxicity (Δ < 0): v3 counts it on TP↑."""
    tab, scalars = summarize(
        table(
            [
                (0.3, 2.0, 1.0, 1.0),  # TP, δ = 1: Δ = 2 − 1 = +1          v1 TP↓, v3 TP↓
                (0.3, 2.0, 1.0, 1.0, 3.0),  # TP, δ = 1, p 1 → 3: Δ = 2 − 3 = −1  v1 TP↓, v3 TP↑
                (0.3, 2.0, 3.0, 1.0),  # TP, δ = −1: Δ = 2 − 3 = −1         v1 TP↑, v3 TP↑
                (-0.3, -1.0, -0.5, -2.0),  # AN, δ = −0.5: Δ = 2 − 1 = +1       v1 AN↓, v3 AN↓
                (-0.3, -1.0, -0.5, -2.0, -0.5),  # AN, δ = −0.5, p −2 → −0.5: Δ = 2 − 0.25 = +1.75
            ]
        )
    )
    assert (row(tab, "TP↓")["count"], row(tab, "TP↓")["sum_contribution"]) == (2, 0.0)
    assert (row(tab, "TP↓")["count_v3"], row(tab, "TP↓")["sum_contribution_v3"]) == (1, 1.0)
    assert (row(tab, "TP↑")["count"], row(tab, "TP↑")["sum_contribution"]) == (1, -1.0)
    assert (row(tab, "TP↑")["count_v3"], row(tab, "TP↑")["sum_contribution_v3"]) == (2, -2.0)
    assert (row(tab, "AN↓")["count"], row(tab, "AN↓")["count_v3"]) == (2, 2)
    assert scalars["sum_positive_contribution"] == pytest.approx(3.75)
    assert row(tab, "TP↓")["share_v3"] == pytest.approx(1.0 / 3.75)
    assert row(tab, "AN↓")["share_v3"] == pytest.approx(2.75 / 3.75)
    assert row(tab, "TP↑")["share_v3"] == pytest.approx(1.0)
    # v1 over the four ↓ groups: TP↓ 0 and AN↓ 2.75 of 2.75
    assert (row(tab, "TP↓")["share_v1"], row(tab, "AN↓")["share_v1"]) == (0.0, pytest.approx(1.0))


def test_top_toxic_share_keeps_only_positively_activated_dampened_top_neurons():
    """200 neurons, p = 2. The 128 with the largest cos (0.5…0.627): 10 kept (ā_pre 1, δ 0.5: Δ 1 each); 10 with
    ā_pre < 0 (Δ +1), 10 with δ < 0 (Δ −1), one with δ = 0 and 97 with ā_pre = 0 (Δ +0.5) are not. The other 72 have
    cos ≤ 0.171 and Δ = 1 each: in Σ positive Δ, not in the share."""
    rows = (
        [(0.5 + i / 1000, 1.0, 0.5, 2.0) for i in range(10)]
        + [(0.51 + i / 1000, -1.0, -1.5, 2.0) for i in range(10)]
        + [(0.52 + i / 1000, 1.0, 1.5, 2.0) for i in range(10)]
        + [(0.53, 1.0, 1.0, 2.0)]
        + [(0.531 + i / 1000, 0.0, -0.25, 2.0) for i in range(97)]
        + [(0.1 + i / 1000, 1.0, 0.5, 2.0) for i in range(72)]
    )
    metrics = table(rows)
    positive_total = 10 + 10 + 97 * 0.5 + 72
    found = top_toxic_share(metrics, positive_total)
    assert (found["top_toxic_k"], found["top_toxic_kept"]) == (128, 10)
    assert found["top_toxic_sum"] == pytest.approx(10.0)
    assert found["top_toxic_share"] == pytest.approx(10.0 / 140.5)
    assert found["top_toxic_all_sum"] == pytest.approx(10 + 10 - 10 + 0 + 48.5)
    assert summarize(metrics)[1]["top_toxic_share"] == pytest.approx(10.0 / 140.5)


def test_the_stored_summary_table_has_the_schema_columns(tmp_path):
    from neuron_explorer.cache.reader import CacheReader

    path = build_synthetic_cache(tmp_path / "s.h5", n_layers=2, d_mlp=16, n_prompts=4, cluster_top_k=8, n_clusters=2)
    with CacheReader(path) as reader:
        frame = reader.group_summary()
    assert frame.columns == list(schema.SUMMARY_COLUMNS)
    assert frame["group"].to_list() == list(schema.GROUP_NAMES)


def test_printed_summary_labels_each_definition():
    """`compute`'s last words: v1 and v3 columns side by side, each row's numbers from its own definition."""
    from rich.console import Console

    from neuron_explorer.commands.compute import share_report

    groups, scalars = summarize(
        table(
            [
                (0.3, 2.0, 1.0, 1.0),
                (0.3, 2.0, 1.0, 1.0, 3.0),
                (0.3, 2.0, 3.0, 1.0),
                (-0.3, -1.0, -0.5, -2.0),
                (-0.3, -1.0, -0.5, -2.0, -0.5),
            ]
        )
    )
    console = Console(record=True, width=200)
    for part in share_report(groups, scalars, "cache.h5"):
        console.print(part)
    lines = [" ".join(line.replace("│", " ").replace("┃", " ").split()) for line in console.export_text().splitlines()]
    assert "group v1 neurons v1 Σ Δ v1 share v3 neurons v3 Σ Δ v3 share v3 firing v3 writing" in lines
    # TP↓: v1 2 neurons summing to 0, 0% of the ↓ groups' 2.75; v3 1 neuron, +1 = 26.7% of Σ positive Δ 3.75
    assert "TP↓ 2 +0 0.0% 1 +1 26.7% +1 +0" in lines
    # TP↑ v3: δ = 1 with p 1 → 3 (firing 1·1, writing 1·(1 − 3) = −2) and δ = −1 with p unchanged (firing −1)
    assert "TP↑ 1 -1 100.0% 2 -2 100.0% +0 -2" in lines
    assert any(line.startswith("v1 groups (sign of δ)") for line in lines)
    assert any(line.startswith("v3 (Δ > 0 by sign class") for line in lines)
    assert "AP↑ 0 +0 0.0% 0 +0 0.0% +0 +0" in lines
    assert (
        "v2 top-5 toxic neurons (largest cos; the 2 with ā_pre > 0 and δ > 0): Σ Δ +0 = 0.0% of Σ positive Δ" in lines
    )


def test_firing_and_writing_terms_sum_to_delta():
    """Random neurons, with and without an output norm's written means: the two terms add up to Δ = P_pre − P_dpo
    (recomputed here from the definitions of METHOD §2) to float32 precision, per neuron, per group and in total."""
    rng = np.random.default_rng(5)
    shape = (3, 50)
    p_pre, act_pre, act_dpo = (rng.normal(0, 1, shape) for _ in range(3))
    p_dpo = p_pre + rng.normal(0, 0.3, shape)
    cos = rng.normal(0, 0.1, shape)
    for written in (None, (rng.normal(0, 1, shape), rng.normal(0, 1, shape))):
        metrics = neuron_metrics(
            p_pre=p_pre,
            p_dpo=p_dpo,
            cos_pre=cos,
            cos_dpo=cos,
            value_cos=np.ones(shape),
            act_pre=act_pre,
            act_dpo=act_dpo,
            written_pre=None if written is None else written[0],
            written_dpo=None if written is None else written[1],
        )
        writes_pre, writes_dpo = (act_pre, act_dpo) if written is None else written
        delta = writes_pre * p_pre - writes_dpo * p_dpo
        parts = metrics["activation_term"].astype(np.float64) + metrics["weight_term"]
        np.testing.assert_allclose(parts, delta, rtol=1e-6, atol=1e-6)
        tab, scalars = summarize(metrics)
        for suffix in ("", "_v3"):
            np.testing.assert_allclose(
                tab[f"sum_activation_term{suffix}"] + tab[f"sum_weight_term{suffix}"],
                tab[f"sum_contribution{suffix}"],
                rtol=1e-6,
                atol=1e-5,
            )
        assert scalars["net_activation_term"] + scalars["net_weight_term"] == pytest.approx(
            scalars["net_contribution"], abs=1e-5
        )


def test_firing_and_writing_of_a_hand_built_neuron():
    """ā 2 → 1.5 and p 1 → 3: firing (2 − 1.5)·1 = 0.5, writing 1.5·(1 − 3) = −3, Δ = 2 − 4.5 = −2.5. With an
    output norm the written means (4 → 1) take the place of ā: firing 3, writing 1·(1 − 3) = −2."""
    plain = table([(0.3, 2.0, 1.5, 1.0, 3.0)])
    assert (plain["activation_term"][0, 0], plain["weight_term"][0, 0], plain["contribution"][0, 0]) == (
        0.5,
        -3.0,
        -2.5,
    )
    one = np.ones((1, 1))
    normed = neuron_metrics(
        p_pre=one,
        p_dpo=3 * one,
        cos_pre=one,
        cos_dpo=one,
        value_cos=one,
        act_pre=2 * one,
        act_dpo=1.5 * one,
        written_pre=4 * one,
        written_dpo=one,
    )
    assert (normed["activation_term"][0, 0], normed["weight_term"][0, 0], normed["contribution"][0, 0]) == (3, -2, 1)


def test_a_cache_written_before_the_optional_columns_still_opens(tmp_path):
    """schema.OPTIONAL_DATASETS removed from a complete cache: it opens, and the reader gives their columns as NaN."""
    import h5py

    from neuron_explorer.cache.reader import CacheReader

    path = build_synthetic_cache(tmp_path / "s.h5", n_layers=2, d_mlp=16, n_prompts=4, cluster_top_k=8, n_clusters=2)
    with h5py.File(path, "a") as handle:
        for name in schema.OPTIONAL_DATASETS:
            del handle[name]
    with CacheReader(path) as reader:
        frame = reader.neurons()
        layers = reader.layers()
        assert not reader.has("neurons/auroc")
    for name in ("activation_term", "weight_term", "auroc"):
        assert frame[name].is_nan().all()
    assert layers["sum_weight_term"].is_nan().all() and layers["sum_contribution"].is_finite().all()
