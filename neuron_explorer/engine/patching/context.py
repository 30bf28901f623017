"""What every patch mode's builder reads (`modes.InterventionContext`), in one implementation that patch runs
(`PatchSession`) and the prompt lab (`LabSession`) share: the base model, the cache's probe direction and neuron
means, the tuned model on demand, and the cosines the tuning-free edit ranks neurons by."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from neuron_explorer.cache.reader import CacheReader
from neuron_explorer.engine.patching import modes
from neuron_explorer.events import Message, Reporter, ignore

NEURON_MEANS = ("act_pre", "act_dpo", "act_shift")  # the cache's arrays the builders read


class CacheContext(ABC):
    """The base model and the cache's numbers the modes need; `subtract_alpha` is each session's own (a patch run
    measures it on the statistics prompts, the lab on the prompt itself)."""

    def __init__(
        self,
        reader: CacheReader,
        loaded,
        tuned_spec: str,
        *,
        device: str,
        dtype: str,
        report: Reporter = ignore,
        tuned=None,
    ):
        """``tuned``: the tuned model when it is loaded already; otherwise `tuned()` loads it on first use."""
        self.reader, self.loaded, self.tuned_spec = reader, loaded, tuned_spec
        self.device, self.dtype, self.report = device, dtype, report
        self.probe = reader.probe_direction().astype(np.float64)
        self.unit_probe = self.probe / np.linalg.norm(self.probe)
        self.arrays = {name: reader.neuron_array(name).astype(np.float64) for name in NEURON_MEANS}
        self._tuned = tuned
        self._cos_embedding: np.ndarray | None = None

    def tuned(self):
        """The tuned (DPO) model, loaded on first use."""
        if self._tuned is None:
            from neuron_explorer.engine.model.loading import load_model

            self.report(Message(f"loading the tuned model {self.tuned_spec}"))
            self._tuned = load_model(self.tuned_spec, device=self.device, dtype=self.dtype)
        return self._tuned

    def cos_embedding(self) -> np.ndarray:
        """cos(v_i, toxic embedding) of the base model, with Yang et al.'s five-and-five seed words: the direction
        their tuning-free edit ranks neurons by."""
        if self._cos_embedding is None:
            from neuron_explorer.engine.measure.probe import toxic_embedding_direction
            from neuron_explorer.engine.patching.interventions import value_vector_cosines

            direction = toxic_embedding_direction(self.loaded, modes.TUNING_FREE_SEED_WORDS).direction
            self._cos_embedding = value_vector_cosines(self.loaded, direction)
        return self._cos_embedding

    @abstractmethod
    def subtract_alpha(self) -> tuple[float, str]:
        """`subtract`'s α when none is given, and where it was measured."""
