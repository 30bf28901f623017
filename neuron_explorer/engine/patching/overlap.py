"""Two neuron sets against chance: size, overlap and Jaccard, and the same for layer-matched random sets.

Selection rules (groups, `toxic:K`, `auroc:K`, clusters) pick their neurons from some layers more than others, so
two rules that both favour the last layers overlap more than two uniform draws would, by layer alone. The chance
level keeps each set's count per layer and places its neurons at random within the layer (a permutation within
layers). The overlap of a layer is then hypergeometric: a draw of a_ℓ of the layer's d neurons, of which b_ℓ are
in the other set. Its mean is Σ_ℓ a_ℓ·b_ℓ/d and its variance Σ_ℓ a_ℓ·b_ℓ·(d−a_ℓ)·(d−b_ℓ)/(d²·(d−1)); the
Jaccard index o/(|A|+|B|−o) is a function of the overlap o, so its chance spread comes from the same draws.

Only numpy: the command line and the explorer use it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from neuron_explorer.cache import layout
from neuron_explorer.engine.patching.neuron_sets import resolve
from neuron_explorer.errors import UserError

DEFAULT_DRAWS = 2000
# What `compare-sets FILE` and the explorer's sets screen compare when no sets are named: the four reducing groups,
# the papers' toxic neurons, the best detectors (where the cache has them) and the largest contributors.
DEFAULT_SPECS = ("group:TP↓", "group:TN↓", "group:AP↓", "group:AN↓", "toxic:128", "auroc:128", "top:128:contribution")


@dataclass(frozen=True)
class SetComparison:
    """Sets A and B of one model's neurons, and what layer-matched random sets of their sizes give."""

    a: str
    b: str
    size_a: int
    size_b: int
    overlap: int
    jaccard: float
    chance_overlap: float  # mean overlap of layer-matched random sets (exact: Σ a_ℓ b_ℓ / d)
    chance_overlap_sd: float  # its standard deviation (exact)
    chance_jaccard: float  # mean Jaccard over the random draws
    chance_jaccard_sd: float
    p_value: float  # share of draws (one added to each count) with an overlap at least the observed one
    draws: int

    @property
    def enrichment(self) -> float:
        """Overlap over its chance mean (NaN when chance expects none)."""
        return self.overlap / self.chance_overlap if self.chance_overlap > 0 else float("nan")


def jaccard(overlap, size_a: int, size_b: int):
    """|A ∩ B| / |A ∪ B|, 0 for two empty sets (works on arrays of overlaps)."""
    union = size_a + size_b - np.asarray(overlap, dtype=np.float64)
    return np.where(union > 0, np.asarray(overlap, dtype=np.float64) / np.maximum(union, 1), 0.0)


def compare(
    mask_a: np.ndarray,
    mask_b: np.ndarray,
    *,
    a: str = "A",
    b: str = "B",
    draws: int = DEFAULT_DRAWS,
    rng: np.random.Generator | None = None,
) -> SetComparison:
    """Compare two (n_layers, d_mlp) boolean masks; `draws` layer-matched random pairs give the chance spread."""
    if mask_a.shape != mask_b.shape:
        raise ValueError(f"the sets have shapes {mask_a.shape} and {mask_b.shape}")
    rng = rng or np.random.default_rng(0)
    d = mask_a.shape[1]
    count_a, count_b = mask_a.sum(axis=1), mask_b.sum(axis=1)
    size_a, size_b = int(count_a.sum()), int(count_b.sum())
    overlap = int((mask_a & mask_b).sum())
    # each row: one random placement of A's neurons within their layers, met with B (hypergeometric per layer)
    random_overlaps = rng.hypergeometric(count_b, d - count_b, count_a, size=(draws, len(count_a))).sum(axis=1)
    random_jaccard = jaccard(random_overlaps, size_a, size_b)
    mean = float((count_a * count_b).sum() / d)
    variance = float((count_a * count_b * (d - count_a) * (d - count_b)).sum() / (d * d * (d - 1))) if d > 1 else 0.0
    return SetComparison(
        a=a,
        b=b,
        size_a=size_a,
        size_b=size_b,
        overlap=overlap,
        jaccard=float(jaccard(overlap, size_a, size_b)),
        chance_overlap=mean,
        chance_overlap_sd=variance**0.5,
        chance_jaccard=float(random_jaccard.mean()),
        chance_jaccard_sd=float(random_jaccard.std()),
        p_value=float((1 + (random_overlaps >= overlap).sum()) / (1 + draws)),
        draws=draws,
    )


def compare_all(masks: dict[str, np.ndarray], *, draws: int = DEFAULT_DRAWS, seed: int = 0) -> list[SetComparison]:
    """Every pair of the named sets, in the order given (A before B)."""
    rng = np.random.default_rng(seed)
    return [compare(masks[a], masks[b], a=a, b=b, draws=draws, rng=rng) for a, b in combinations(masks, 2)]


def format_row(result: SetComparison) -> dict[str, str]:
    """One comparison as the printed table's cells (the command and the explorer show the same)."""
    return {
        "A": result.a,
        "B": result.b,
        "|A|": f"{result.size_a:,}",
        "|B|": f"{result.size_b:,}",
        "∩": f"{result.overlap:,}",
        "chance ∩": f"{result.chance_overlap:.1f}±{result.chance_overlap_sd:.1f}",
        "×": "—" if np.isnan(result.enrichment) else f"{result.enrichment:.1f}",
        "J": f"{result.jaccard:.3f}",
        "chance J": f"{result.chance_jaccard:.3f}±{result.chance_jaccard_sd:.3f}",
        "p": f"{result.p_value:.2g}",
    }


def resolve_masks(reader, specs) -> dict[str, np.ndarray]:
    """Each spec of `neuron_sets` (one set each, not a union) as a (n_layers, d_mlp) mask, keyed by the spec."""
    masks = {}
    for spec in specs:
        selection = resolve(reader, [spec])
        masks[spec] = selection.mask(reader.info.n_layers, reader.info.d_mlp)
    if len(masks) < 2:
        raise UserError("compare at least two neuron sets, e.g. group:TP↓ toxic:128")
    return masks


def default_specs(reader) -> list[str]:
    """DEFAULT_SPECS less `auroc:128` where the cache has no finite AUROC."""
    has_auroc = reader.has(layout.neuron_path("auroc")) and np.isfinite(reader.neuron_array("auroc")).any()
    return [spec for spec in DEFAULT_SPECS if has_auroc or not spec.startswith("auroc:")]
