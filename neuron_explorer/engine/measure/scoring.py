"""Toxicity scorers: one interface, several implementations.

A scorer maps texts to probabilities of being toxic/offensive in [0, 1]. Callers score the continuation alone,
with the prompt removed (METHOD §5).

- `profanity` (default, offline): alt-profanity-check, a calibrated linear SVM on TF-IDF features trained on
  human-labelled offensive text. Fast on a CPU and ships its weights inside the wheel.
- `wordlist` (offline, the second opinion): better-profanity's curated word list (with leetspeak variants); a
  continuation scores 1 when it contains a listed word, else 0, so its mean is the share of continuations with a
  profane word. A different method (a lexicon, no learning) on different data from the default scorer: the build
  reports it beside the default because it plays no part in training (the default labels the probe and picks the
  preference pairs, so it should not be the only judge of the result).
- `detoxify[:VARIANT]` (optional extra `pip install neuron-explorer[detoxify]`): Detoxify "original" (Yang v3) or
  another variant. Used only when the package is installed and its checkpoint is already on disk: in torch's hub
  cache, or at the path in $NEURON_EXPLORER_DETOXIFY_CHECKPOINT, or given as `detoxify:VARIANT:/path/to.ckpt`.
  It never downloads.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from neuron_explorer.errors import UserError
from neuron_explorer.spec.settings import SCORER

# File names that Detoxify's loader asks torch.hub for (detoxify/detoxify.py, MODEL_URLS).
DETOXIFY_CHECKPOINTS = {
    "original": "toxic_original-c1212f89.ckpt",
    "unbiased": "toxic_debiased-c7548aa0.ckpt",
    "multilingual": "multilingual_debiased-0b549669.ckpt",
    "original-small": "original-albert-0e1d6498.ckpt",
    "unbiased-small": "unbiased-albert-c8519128.ckpt",
}


@runtime_checkable
class Scorer(Protocol):
    name: str

    def score(self, texts: list[str]) -> np.ndarray:
        """(len(texts),) float64 toxicity probabilities in [0, 1]."""

    def describe(self) -> dict:
        """Provenance: name, package and version."""


class ProfanityCheckScorer:
    """alt-profanity-check: `predict_prob` of a calibrated linear SVM (probability of offensive language)."""

    name = "profanity"

    def __init__(self) -> None:
        if importlib.util.find_spec("profanity_check") is None:
            raise UserError("the offline scorer needs alt-profanity-check: pip install alt-profanity-check")
        import profanity_check

        self._predict = profanity_check.predict_prob

    def score(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0)
        texts = [t if t.strip() else " " for t in texts]
        return np.asarray(self._predict(list(texts)), dtype=np.float64)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "package": "alt-profanity-check",
            "version": importlib.metadata.version("alt-profanity-check"),
            "method": "calibrated linear SVM (TF-IDF), probability of offensive language",
        }


class WordListScorer:
    """better-profanity: 1 when the text contains a word of its list (or a leetspeak variant of one), else 0."""

    name = "wordlist"

    def __init__(self) -> None:
        if importlib.util.find_spec("better_profanity") is None:
            raise UserError("the word-list scorer needs better-profanity: pip install better-profanity")
        from better_profanity import profanity

        profanity.load_censor_words()
        self._profanity = profanity

    def score(self, texts: list[str]) -> np.ndarray:
        return np.asarray([float(self._profanity.contains_profanity(t)) for t in texts], dtype=np.float64)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "package": "better-profanity",
            "version": importlib.metadata.version("better-profanity"),
            "method": "word list with leetspeak variants: 1 if the text contains a listed word, else 0",
        }


class DetoxifyScorer:
    """Detoxify (Hanu & Unitary 2020) "toxicity" head; loaded from a local checkpoint only."""

    def __init__(self, variant: str = "original", checkpoint: str | Path | None = None, device: str = "cpu") -> None:
        self.name = f"detoxify:{variant}"
        if variant not in DETOXIFY_CHECKPOINTS:
            raise UserError(f"unknown Detoxify variant '{variant}': use one of {', '.join(DETOXIFY_CHECKPOINTS)}")
        if importlib.util.find_spec("detoxify") is None:
            raise UserError(
                "the Detoxify scorer is not installed: pip install 'neuron-explorer[detoxify]' "
                "(and put its checkpoint on disk), or use --scorer profanity"
            )
        path = Path(checkpoint).expanduser() if checkpoint else self._find_checkpoint(variant)
        if path is None or not path.exists():
            raise UserError(
                f"the Detoxify '{variant}' checkpoint is not on disk (looked for "
                f"{DETOXIFY_CHECKPOINTS[variant]} in torch's hub cache and "
                f"$NEURON_EXPLORER_DETOXIFY_CHECKPOINT); neuron-explorer never downloads it: fetch it on a "
                f"machine with network access and pass --scorer detoxify:{variant}:PATH"
            )
        from detoxify import Detoxify

        self.checkpoint = path
        self.variant = variant
        try:
            self._model = Detoxify(variant, checkpoint=str(path), device=device)
        except Exception as error:  # transformers needs the matching tokenizer/config, maybe from the hub
            raise UserError(
                f"Detoxify could not load {path} offline ({type(error).__name__}: {error}); its "
                f"tokenizer must be in the Hugging Face cache too, or use --scorer profanity"
            ) from error

    @staticmethod
    def _find_checkpoint(variant: str) -> Path | None:
        env = os.environ.get("NEURON_EXPLORER_DETOXIFY_CHECKPOINT")
        if env:
            return Path(env).expanduser()
        import torch

        candidate = Path(torch.hub.get_dir()) / "checkpoints" / DETOXIFY_CHECKPOINTS[variant]
        return candidate if candidate.exists() else None

    def score(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0)
        out = []
        for start in range(0, len(texts), 64):
            result = self._model.predict(list(texts[start : start + 64]))
            out.extend(result["toxicity"])
        return np.asarray(out, dtype=np.float64)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "package": "detoxify",
            "version": importlib.metadata.version("detoxify"),
            "checkpoint": str(self.checkpoint),
            "method": f"Detoxify {self.variant}, toxicity head",
        }


def get_scorer(spec: str = SCORER, *, device: str = "cpu") -> Scorer:
    """`profanity` (default), `wordlist`, `detoxify`, `detoxify:VARIANT` or `detoxify:VARIANT:CHECKPOINT`."""
    name, _, rest = spec.partition(":")
    if name in {"profanity", "alt-profanity-check", "profanity-check"}:
        return ProfanityCheckScorer()
    if name in {"wordlist", "better-profanity"}:
        return WordListScorer()
    if name == "detoxify":
        variant, _, checkpoint = rest.partition(":")
        return DetoxifyScorer(variant or "original", checkpoint or None, device=device)
    raise UserError(
        f"unknown scorer '{spec}': use profanity (offline default), wordlist or detoxify[:VARIANT[:CHECKPOINT]]"
    )
