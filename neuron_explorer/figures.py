"""The papers' figures from a cache (and the numbers behind them, which the explorer's Runs screen shows too).

`write_figures` draws, with matplotlib, each as SVG and PNG:
  layers       Σ Δ per layer, stacked by the four ↓ groups (up) and their ↑ mirrors (down)
  shares       each group's share (v1, the cache's group column; v3 beside it)
  recovered    the fraction of DPO's effect each stored patch run recovers, ± one standard error
  neuron       one neuron's per-prompt mean activation, base against DPO (default: the largest Δ)
Every file carries its provenance (cache, models, protocol, group definition) in its metadata.

Torch-free; matplotlib is imported only when a figure is drawn, so the command line's --help stays fast and the
explorer can import the numbers without it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neuron_explorer.cache import annotations as sidecar
from neuron_explorer.cache import layout, schema
from neuron_explorer.cache.reader import CacheReader, neuron_id, parse_neuron_id

GROUP_DEFINITION = "v1: sign class from cos_pre and ā_pre, ↓/↑ from the sign of δ (the cache's group column)"
FIGURES = ("layers", "shares", "recovered", "neuron")
# Blues and greens for the groups that reduce toxicity, reds and oranges for their mirrors (as in the explorer).
GROUP_COLORS = dict(
    zip(schema.GROUP_NAMES, ("#0087ff", "#00d7ff", "#00af00", "#afd700", "#d70000", "#ff5f00", "#d75fd7", "#ffd700"))
)


# -- the numbers -------------------------------------------------------------------------------------------------
def recovered_error(recovered: float, run_sem: float, base: dict, dpo: dict) -> float:
    """The standard error of recovered R = (tox_base − tox_run) / (tox_base − tox_dpo), by the delta method from the
    three toxicities' standard errors taken as independent (the same prompts' scores usually correlate, so it errs
    high): √(s_run² + (1−R)² s_base² + R² s_dpo²) / |tox_base − tox_dpo|. NaN when a term is missing or not finite."""
    gap = base.get("toxicity", math.nan) - dpo.get("toxicity", math.nan)
    terms = (run_sem, base.get("toxicity_sem", math.nan), dpo.get("toxicity_sem", math.nan), recovered, gap)
    if not all(isinstance(term, (int, float)) and math.isfinite(term) for term in terms) or gap == 0:
        return math.nan
    variance = run_sem**2 + (1 - recovered) ** 2 * base["toxicity_sem"] ** 2 + recovered**2 * dpo["toxicity_sem"] ** 2
    return math.sqrt(variance) / abs(gap)


@dataclass(frozen=True)
class RecoveredRow:
    """One stored run as the Runs screen's chart and the `recovered` figure show it."""

    run_id: str
    label: str
    recovered: float
    error: float  # one standard error; NaN when the run's baseline (or a s.e.) is missing


def recovered_rows(cache_path: str | Path, runs: list[sidecar.PatchRun] | None = None) -> list[RecoveredRow]:
    """Every stored run (or ``runs``) with its recovered fraction and its standard error, oldest first."""
    runs = sidecar.list_runs(cache_path) if runs is None else runs
    baselines: dict[str, dict | None] = {}
    rows = []
    for run in runs:
        key = run.settings.get("baseline")
        if key and key not in baselines:
            baselines[key] = sidecar.load_baseline(cache_path, key)
        baseline = (baselines.get(key) if key else None) or {}
        recovered = _number(run.metrics.get("recovered"))
        error = recovered_error(
            recovered, _number(run.metrics.get("toxicity_sem")), baseline.get("base") or {}, baseline.get("dpo") or {}
        )
        rows.append(RecoveredRow(run.run_id, str(run.settings.get("label", run.run_id)), recovered, error))
    return rows


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def layer_group_sums(reader: CacheReader) -> np.ndarray:
    """(n_layers, 8): Σ Δ of each group (GROUP_NAMES order) in each layer."""
    wide = reader.layer_group_sums().pivot(on="group", index="layer", values="sum_contribution").sort("layer")
    return np.column_stack(
        [wide[name].to_numpy() if name in wide.columns else np.zeros(wide.height) for name in schema.GROUP_NAMES]
    )


def provenance(reader: CacheReader) -> dict:
    """What a figure was drawn from: the cache, its models and protocol, and the group definition."""
    info, recorded = reader.info, reader.info.provenance
    return {
        "cache": info.path.name,
        "created": info.created,
        "architecture": info.architecture,
        "neurons": f"{info.n_layers}×{info.d_mlp}",
        "prompts": info.n_prompts,
        "base": recorded.get("base"),
        "tuned": recorded.get("tuned"),
        "probe": recorded.get("probe"),
        "protocol": {"positions": reader.attrs().get(layout.POSITIONS), "settings": recorded.get("settings")},
        "groups": GROUP_DEFINITION,
        "tool": "neuron-explorer figures",
    }


# -- the figures --------------------------------------------------------------------------------------------------
def layers_figure(reader: CacheReader):
    """Σ Δ per layer: each group's sum a bar segment, positive sums stacked upward and negative ones downward."""
    sums = layer_group_sums(reader)
    figure, axes = _figure((8, 4))
    layers = np.arange(len(sums))
    above, below = np.zeros(len(sums)), np.zeros(len(sums))
    for code, name in enumerate(schema.GROUP_NAMES):
        values = sums[:, code]
        axes.bar(
            layers,
            values,
            bottom=np.where(values >= 0, above, below),
            color=GROUP_COLORS[name],
            width=0.8,
            label=name,
            gid=name,
        )
        above += np.clip(values, 0, None)
        below += np.clip(values, None, 0)
    axes.axhline(0, color="grey", linewidth=0.8)
    axes.xaxis.set_major_locator(_integer_ticks())
    axes.set_xlabel("layer")
    axes.set_ylabel("Σ Δ (Δ = P_pre − P_dpo)")
    axes.set_title("Σ Δ per layer by group (v1): ↓ groups up, ↑ mirrors down")
    axes.legend(fontsize=7, ncol=4)
    return figure


def shares_figure(reader: CacheReader):
    """Each group's share: v1 (its Σ Δ over the four ↓ or the four ↑ groups' Σ Δ) and v3 beside it."""
    summary = reader.group_summary()
    figure, axes = _figure((7, 3.5))
    x = np.arange(summary.height)
    colors = [GROUP_COLORS[name] for name in summary["group"]]
    axes.bar(x - 0.2, summary["share_v1"].to_numpy(), width=0.4, color=colors, label="v1 (default)", gid="v1")
    axes.bar(
        x + 0.2,
        summary["share_v3"].to_numpy(),
        width=0.4,
        color=colors,
        alpha=0.45,
        hatch="//",
        label="v3 (Δ > 0 by sign class)",
        gid="v3",
    )
    axes.set_xticks(x, summary["group"].to_list())
    axes.set_ylabel("share")
    axes.yaxis.set_major_formatter(_percent())
    axes.set_title("Group shares: ↓ of the four ↓ groups' Σ Δ, ↑ of the four mirrors'")
    axes.legend(fontsize=8)
    return figure


def recovered_figure(reader: CacheReader, rows: list[RecoveredRow] | None = None):
    """The recovered fraction of each stored run, with ± one standard error (none: not drawn)."""
    rows = recovered_rows(reader.path) if rows is None else rows
    figure, axes = _figure((7, 0.9 + 0.35 * max(len(rows), 1)))
    if rows:
        y = np.arange(len(rows))[::-1]
        errors = [0.0 if math.isnan(row.error) else row.error for row in rows]
        axes.barh(y, [row.recovered for row in rows], xerr=errors, color="#0087ff", capsize=3, gid="recovered")
        axes.set_yticks(y, [row.label for row in rows], fontsize=8)
        axes.axvline(1.0, color="grey", linestyle="--", linewidth=0.8)
        axes.axvline(0.0, color="grey", linewidth=0.8)
        axes.xaxis.set_major_formatter(_percent())
    else:
        axes.text(0.5, 0.5, "no stored patching runs", ha="center", va="center", transform=axes.transAxes)
        axes.set_yticks([])
    axes.set_xlabel("fraction of DPO's toxicity reduction recovered (1 = DPO), ± s.e.")
    axes.set_title("Patching runs: recovered = (tox_base − tox_run) / (tox_base − tox_dpo)")
    return figure


def top_neuron(reader: CacheReader) -> tuple[int, int]:
    """The neuron with the largest Δ."""
    contribution = reader.neuron_array("contribution")
    layer, index = np.unravel_index(int(np.nanargmax(contribution)), contribution.shape)
    return int(layer), int(index)


def neuron_figure(reader: CacheReader, neuron: tuple[int, int]):
    """One neuron's mean activation per prompt: histograms of the base and DPO models over shared bins."""
    prompts = reader.prompt_activations(*neuron)
    figure, axes = _figure((6, 3.5))
    name = neuron_id(*neuron)
    if {"act_pre", "act_dpo"} <= set(prompts.columns):
        pre, dpo = prompts["act_pre"].to_numpy(), prompts["act_dpo"].to_numpy()
        bins = np.histogram_bin_edges(np.concatenate([pre, dpo]), bins=min(40, max(8, len(pre) // 4)))
        axes.hist(pre, bins=bins, alpha=0.6, color="#0087ff", label="base", gid="base")
        axes.hist(dpo, bins=bins, alpha=0.6, color="#ff8700", label="DPO", gid="dpo")
        axes.legend(fontsize=8)
    else:
        axes.text(
            0.5, 0.5, "this cache stores no per-prompt activations", ha="center", va="center", transform=axes.transAxes
        )
    axes.set_xlabel("mean activation over the prompt's recorded positions (ā)")
    axes.set_ylabel("prompts")
    axes.set_title(f"{name}: activation per prompt, base vs DPO")
    return figure


def write_figures(
    cache_path: str | Path,
    folder: str | Path | None = None,
    neuron: str | None = None,
    which: tuple[str, ...] = FIGURES,
) -> list[Path]:
    """Draw ``which`` figures of the cache as SVG and PNG into ``folder`` (default: the cache's folder, in
    ``<stem>-figures/``); return the files written."""
    folder = Path(folder) if folder is not None else Path(cache_path).with_name(f"{Path(cache_path).stem}-figures")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with CacheReader(cache_path) as reader:
        chosen = parse_neuron_id(neuron) if neuron else top_neuron(reader)
        record = provenance(reader)
        builders = {
            "layers": lambda: layers_figure(reader),
            "shares": lambda: shares_figure(reader),
            "recovered": lambda: recovered_figure(reader),
            "neuron": lambda: neuron_figure(reader, chosen),
        }
        for name in which:
            figure = builders[name]()
            details = {**record, "figure": name}
            if name == "neuron":
                details["neuron"] = neuron_id(*chosen)
            stem = f"{Path(cache_path).stem}-{name}" + (
                f"-{neuron_id(*chosen).replace('/', '-')}" if name == "neuron" else ""
            )
            written += _save(figure, folder / stem, details)
    return written


def read_metadata(path: Path) -> dict:
    """The provenance a figure file carries (its Description, as JSON): for tests and for checking a figure."""
    if path.suffix == ".png":
        from PIL import Image, PngImagePlugin

        with Image.open(path) as image:
            assert isinstance(image, PngImagePlugin.PngImageFile)  # the figures' PNGs (their text chunks)
            return json.loads(image.text["Description"])
    text = path.read_text(encoding="utf-8")
    start = text.index("<dc:description>") + len("<dc:description>")
    import html

    return json.loads(html.unescape(text[start : text.index("</dc:description>", start)]))


# -- matplotlib ---------------------------------------------------------------------------------------------------
def _figure(size: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window (and safe in the explorer's worker thread)
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    return figure, figure.add_subplot()


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _percent():
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0)


def _save(figure, stem: Path, details: dict) -> list[Path]:
    description = json.dumps(details, ensure_ascii=False, default=str)
    title = f"neuron-explorer: {details['figure']} of {details['cache']}"
    paths = []
    for suffix, metadata in (
        (".svg", {"Title": title, "Description": description, "Date": None}),
        (".png", {"Title": title, "Description": description, "Software": "neuron-explorer"}),
    ):
        path = stem.with_suffix(suffix)
        figure.savefig(path, metadata=metadata)
        paths.append(path)
    return paths
