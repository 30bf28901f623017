"""Probe directions: loaded from a file, or the toxic-embedding direction from seed words (METHOD §1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neuron_explorer.cache.provenance import sha256_bytes, sha256_file
from neuron_explorer.engine.model.loading import weights_loaded
from neuron_explorer.errors import UserError

TOXIC_EMBEDDING = "toxic-embedding"


@dataclass(frozen=True)
class SeedWords:
    """The two word lists of a toxic-embedding direction and how each word is written before tokenizing."""

    toxic: tuple[str, ...]
    neutral: tuple[str, ...]
    prefix: str  # " ": the word as it appears inside a sentence; "": the bare word


# `toxic-embedding[:NAME]`. "ours" (the default): common insults and profanity versus neutral words of similar
# frequency, each as it appears inside a sentence. "authors": Yang et al. v3's five and five, tokenized as they do
# (the bare word, sub-tokens averaged, then averaged over words; unembedding rows): github.com/Yushi-Y/
# dpo-toxic-neurons, toxicity/logit_lens/demo_toxic_embedding.ipynb (commit b01ddb0b), seed_token_toxic and
# seed_token_non_toxic, the same for GPT-2 medium, Llama-3.1-8B and Gemma-2-2B.
SEED_WORDS = {
    "ours": SeedWords(
        toxic=(
            "fuck",
            "shit",
            "damn",
            "idiot",
            "stupid",
            "moron",
            "dumb",
            "hate",
            "ass",
            "crap",
            "bitch",
            "bastard",
            "loser",
            "ugly",
            "disgusting",
            "pathetic",
            "kill",
            "die",
            "sucks",
            "hell",
        ),
        neutral=(
            "table",
            "window",
            "river",
            "paper",
            "garden",
            "music",
            "yellow",
            "morning",
            "travel",
            "number",
            "kitchen",
            "simple",
            "village",
            "pencil",
            "cloud",
            "market",
            "bridge",
            "summer",
            "engine",
            "letter",
        ),
        prefix=" ",
    ),
    "authors": SeedWords(
        toxic=("fuck", "shit", "crap", "damn", "asshole"),
        neutral=("hello", "thanks", "friend", "peace", "welcome"),
        prefix="",
    ),
}


@dataclass(frozen=True)
class Probe:
    direction: np.ndarray  # (d_model,) float32, not normalized
    source: str
    sha256: str
    seed_words: dict | None = None  # the word lists of a toxic-embedding direction

    @property
    def norm(self) -> float:
        """In float64: a float32 sum of squares overflows to inf from entries of about 1e19 (and underflows to 0
        below about 1e-23), which would make every cos and Δ zero."""
        return probe_norm(self.direction)

    @property
    def unit(self) -> np.ndarray:
        return (self.direction.astype(np.float64) / self.norm).astype(np.float32)

    def provenance(self) -> dict:
        seeds = {"seed_words": self.seed_words} if self.seed_words else {}
        return {"source": self.source, "sha256": self.sha256, "norm": self.norm, **seeds}


def probe_norm(direction: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(direction, dtype=np.float64)))


def load_probe(path: str | Path, d_model: int) -> Probe:
    """Read `.pt` (tensor or state dict with `weight`), `.npy` or `.safetensors`; a (2, d) array is read as the
    toxic row minus the non-toxic row of a two-class linear probe."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(
            f"probe file {path} does not exist: train one with `neuron-explorer train-probe` or use "
            f"--probe toxic-embedding"
        )
    try:
        array = _read_array(path)
    except UserError:
        raise
    except Exception as error:
        raise UserError(
            f"{path} is not a readable probe file ({type(error).__name__}): pass .pt, .npy or .safetensors"
        ) from error
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2 and array.shape[0] == 2:
        array = array[1] - array[0]
    elif array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1:
        raise UserError(f"probe in {path} has shape {tuple(array.shape)}; expected (d), (1, d) or (2, d)")
    if array.shape[0] != d_model:
        raise UserError(
            f"probe in {path} has width {array.shape[0]} but the model's residual stream has width "
            f"{d_model}: use a probe trained on this model"
        )
    if not np.isfinite(array).all() or not 0 < probe_norm(array) < np.inf:
        raise UserError(f"probe in {path} is zero or not finite")
    return Probe(direction=array, source=str(path), sha256=sha256_file(path))


def _read_array(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        tensors = load_file(path)
        return _pick_weight(tensors, path)
    if suffix in {".pt", ".pth", ".bin"}:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(data, torch.Tensor):
            return data.float().numpy()
        if isinstance(data, dict):
            return _pick_weight({k: v.float().numpy() for k, v in data.items() if isinstance(v, torch.Tensor)}, path)
        raise UserError(f"{path} holds a {type(data).__name__}, not a tensor or a state dict with 'weight'")
    raise UserError(f"probe file {path} has an unknown extension: use .pt, .npy or .safetensors")


def _pick_weight(tensors: dict, path: Path) -> np.ndarray:
    if "weight" in tensors:
        return tensors["weight"]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise UserError(f"{path} holds several tensors ({', '.join(tensors)}) and none named 'weight'")


def seed_list_of(spec: str) -> str | None:
    """The seed-word list a probe spec names (`toxic-embedding` is ours, `toxic-embedding:NAME`); None for a file."""
    name, colon, seed_words = spec.partition(":")
    if name != TOXIC_EMBEDDING:
        return None
    return seed_words if colon else "ours"


def toxic_embedding_direction(loaded, seed_words: str = "ours") -> Probe:
    """Mean unembedding vector of the toxic seed words minus that of the neutral ones (each word averaged over its
    tokens), for a list of ``SEED_WORDS``."""
    if seed_words not in SEED_WORDS:
        choices = " or ".join(f"{TOXIC_EMBEDDING}:{name}" for name in SEED_WORDS)
        raise UserError(f"no seed-word list '{seed_words}' for the toxic-embedding probe: use {choices}")
    seeds = SEED_WORDS[seed_words]
    with weights_loaded(loaded.model.get_output_embeddings()):
        unembed = loaded.arch.unembedding(loaded.model).detach().to("cpu", torch.float32, copy=True)

    def mean_vector(words) -> torch.Tensor:
        rows = [
            unembed[loaded.tokenizer(seeds.prefix + word, add_special_tokens=False)["input_ids"]].mean(0)
            for word in words
        ]
        return torch.stack(rows).mean(0)

    direction = (mean_vector(seeds.toxic) - mean_vector(seeds.neutral)).numpy().astype(np.float32)
    key = f"{TOXIC_EMBEDDING}|{','.join(seeds.toxic)}|{','.join(seeds.neutral)}|{seeds.prefix!r}".encode()
    return Probe(
        direction=direction,
        source=f"{TOXIC_EMBEDDING}:{seed_words}",
        sha256=sha256_bytes(key + direction.tobytes()),
        seed_words={"toxic": list(seeds.toxic), "neutral": list(seeds.neutral), "prefix": seeds.prefix},
    )
