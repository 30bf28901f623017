"""Neuron dynamics across training (METHOD §8): the decomposition of each saved DPO checkpoint against one base.

`compute --tuned A --tuned B … --tuned FINAL` records the base once and each checkpoint as it records the final
model (same prompts, positions and, with --shared-continuation, the base's tokens), and keeps per step every
neuron's Δ (float16), each group's Σ Δ and, per layer, the step at which half the final movement was reached.
Group membership is the final model's at every step, so a group's curve follows the same neurons. The summary
(`statistics.summarize_dynamics`) and the writing (`results.write_dynamics`) need no torch.
"""

from __future__ import annotations

import gc

import numpy as np

from neuron_explorer.engine.model.loading import LoadedModel, LoadOptions, load_model
from neuron_explorer.engine.model.weights import probe_projections
from neuron_explorer.engine.neurons.recording import Recording, record_model
from neuron_explorer.engine.neurons.statistics import neuron_metrics
from neuron_explorer.errors import UserError


def checkpoint_contribution(
    spec: str,
    base: LoadedModel,
    base_recording: Recording,
    base_weights: dict,
    unit_probe: np.ndarray,
    load: LoadOptions,
    record: dict,
    texts: list[str],
    shared_continuation: bool,
) -> np.ndarray:
    """Δ (n_layers, d_mlp) of one checkpoint against the base, recorded as the final tuned model is; the checkpoint
    is freed before returning."""
    loaded = load_model(spec, **load)
    try:
        if (loaded.arch.name, loaded.arch.n_layers(loaded.model), loaded.arch.d_mlp(loaded.model)) != (
            base.arch.name,
            base.arch.n_layers(base.model),
            base.arch.d_mlp(base.model),
        ):
            raise UserError(f"checkpoint {spec} is not a copy of the base model's architecture and shape")
        teacher = base_recording.continuation_ids if shared_continuation else None
        recording = record_model(loaded, texts, teacher_tokens=teacher, **record)
        weights = probe_projections(loaded, unit_probe)
        metrics = neuron_metrics(
            p_pre=base_weights["p"],
            p_dpo=weights["p"],
            cos_pre=base_weights["cos"],
            cos_dpo=weights["cos"],
            value_cos=np.ones_like(weights["p"]),
            act_pre=base_recording.act_mean,
            act_dpo=recording.act_mean,
            written_pre=base_recording.written_mean,
            written_dpo=recording.written_mean,
        )
        return metrics["contribution"]
    finally:
        del loaded
        gc.collect()
