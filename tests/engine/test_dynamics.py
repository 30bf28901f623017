"""Neuron dynamics across checkpoints: the per-step summary on hand-made Δ, and `compute` over hand-made checkpoints
whose Δ is known (a third, two thirds and all of the final change of the last layer's value vectors)."""

from __future__ import annotations

import numpy as np
import torch

from neuron_explorer.cache import schema
from neuron_explorer.cache.reader import CacheReader
from neuron_explorer.engine.neurons.compute import ComputeSettings, run_compute
from neuron_explorer.engine.neurons.statistics import summarize_dynamics
from neuron_explorer.spec.settings import RecordingSettings


def test_summary_of_hand_made_steps():
    """Layer 0 moves early (|Δ| 3 of 4 at step 0), layer 1 late (1 of 4, then 1, then 4), layer 2 never."""
    final = np.array([[2.0, -2.0], [3.0, 1.0], [0.0, 0.0]])
    steps = np.stack([np.array([[1.5, -1.5], [1.0, 0.0], [0, 0]]), np.array([[2.0, -2.0], [1.0, 0.0], [0, 0]]), final])
    codes = np.array([[0, 4], [0, 3], [1, 1]])
    found = summarize_dynamics(steps, codes)
    assert found["half_step"].tolist() == [0, 2, -1]
    assert found["layer_movement"][:, 1].tolist() == [1.0, 1.0, 4.0]
    assert found["group_sums"][-1, schema.GROUP_NAMES.index("TP↓")] == 2.0 + 3.0
    assert found["group_sums"][0, schema.GROUP_NAMES.index("TP↑")] == -1.5
    assert found["group_sums"].shape == (3, len(schema.GROUP_NAMES))


def scaled_last_layer(fraction: float):
    def edit(model) -> None:
        down = model.model.layers[-1].mlp.down_proj.weight
        down += fraction * torch.randn(down.shape, generator=torch.Generator().manual_seed(11)) * 0.3

    return edit


def test_compute_over_checkpoints_keeps_each_steps_delta(tiny_models, edited_copy, tmp_path, one_torch_thread):
    """On the base model's tokens only the value vectors move, and Δ is linear in them: step k of 3 has k/3 of the
    final Δ, each group's Σ Δ too, and the last layer reached half its final movement at the second step."""
    (tmp_path / "prompts.txt").write_text("You are a stupid\nThe river runs\nI hate you\nWhat the hell\n")
    torch.save(torch.randn(32, generator=torch.Generator().manual_seed(3)), tmp_path / "probe.pt")
    steps = [edited_copy(tiny_models["llama"], tmp_path / f"step{k}", edit=scaled_last_layer(k / 3)) for k in (1, 2, 3)]
    result = run_compute(
        ComputeSettings(
            base=str(tiny_models["llama"]),
            tuned=str(steps[-1]),
            checkpoints=(str(steps[0]), str(steps[1])),
            probe=str(tmp_path / "probe.pt"),
            prompts=str(tmp_path / "prompts.txt"),
            output=tmp_path / "dyn.h5",
            device="cpu",
            dtype="float32",
            recording=RecordingSettings(new_tokens=4, shared_continuation=True),
            cluster_top_k=20,
            n_clusters=2,
            patch_holdout=0.0,
            difference_lens=False,
        )
    )
    with CacheReader(result.path) as reader:
        found = reader.dynamics()
        final = reader.neuron_array("contribution").astype(np.float64)
        groups = reader.group_summary()["sum_contribution"].to_numpy()
    assert found["steps"] == [str(step) for step in steps]
    delta = found["contribution"].astype(np.float64)
    scale = np.abs(final).max()
    for k in (1, 2, 3):
        np.testing.assert_allclose(delta[k - 1], k / 3 * final, atol=2e-3 * scale)  # float16 storage
        np.testing.assert_allclose(found["group_sums"][k - 1], k / 3 * groups, atol=1e-5 * np.abs(groups).max())
    assert found["half_step"][2] == 1
    np.testing.assert_allclose(
        found["layer_movement"][:, 2] / found["layer_movement"][-1, 2], [1 / 3, 2 / 3, 1], rtol=1e-4
    )


def test_synthetic_caches_carry_a_series(tmp_path):
    """Three steps of a third, two thirds and all of the final Δ: every moving layer is half way at step 1."""
    from neuron_explorer.engine.neurons.synthetic import build_synthetic_cache

    path = build_synthetic_cache(tmp_path / "s.h5", n_layers=2, d_mlp=8, n_prompts=4, cluster_top_k=4, n_clusters=2)
    with CacheReader(path) as reader:
        found = reader.dynamics()
    assert found["steps"] == ["step-100", "step-200", "final"] and found["half_step"].tolist() == [1, 1]


def test_the_command_line_takes_a_series_of_tuned_models():
    from neuron_explorer.cli import build_parser

    args = build_parser().parse_args(["compute", "--tuned", "a", "--tuned", "b", "--tuned", "c"])
    assert args.tuned == ["a", "b", "c"]
    assert build_parser().parse_args(["compute"]).tuned is None
