"""Terminal plots (plotext, 256 colours, no images): per-layer Δ stacked by group, a histogram, a dendrogram."""

from __future__ import annotations

import numpy as np
import polars as pl
from rich.text import Text
from textual_plotext import PlotextPlot

from neuron_explorer.cache import layout
from neuron_explorer.cache.reader import ClusterTree
from neuron_explorer.cache.schema import GROUP_NAMES, REDUCING_GROUPS

# xterm-256 colour numbers: blues/greens for the groups that reduce toxicity, reds/oranges for their mirrors.
GROUP_COLORS = dict(zip(GROUP_NAMES, (33, 45, 34, 148, 160, 202, 170, 220)))


def group_legend() -> Text:
    """The plot's legend as one line of text (a legend inside the plot would cost rows at 80×24)."""
    legend = Text()
    for name, color in GROUP_COLORS.items():
        legend.append("■", style=f"color({color})").append(f"{name} ")
    return legend


class TerminalPlot(PlotextPlot):
    """A plotext plot that keeps to the terminal's own colours and draws its data once it has a size."""

    def on_mount(self) -> None:
        self.theme = "clear"
        self.draw()

    def draw(self) -> None:
        raise NotImplementedError


class LayerContributionPlot(TerminalPlot):
    """Σ Δ per layer, stacked by group: positive parts upward, negative parts downward."""

    def __init__(self, sums: pl.DataFrame, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sums = sums  # long format: layer, group, sum_contribution

    def draw(self) -> None:
        plt = self.plt
        plt.clear_data()
        wide = self.sums.pivot(on="group", index="layer", values="sum_contribution").sort("layer")
        layers = wide["layer"].to_list()
        values = np.column_stack(
            [wide[name].to_numpy() if name in wide.columns else np.zeros(len(layers)) for name in GROUP_NAMES]
        )
        for part in (np.clip(values, 0, None), np.clip(values, None, 0)):
            stacked = np.cumsum(part, axis=1)
            # later bars overdraw earlier ones, so draw the outermost cumulative first
            for code in reversed(range(len(GROUP_NAMES))):
                if np.any(part[:, code]):
                    plt.bar(
                        layers, stacked[:, code].tolist(), color=GROUP_COLORS[GROUP_NAMES[code]], width=0.8, marker="sd"
                    )
        plt.hline(0.0, "gray")
        plt.xlabel("layer")
        step = max(1, len(layers) // 8)
        plt.xticks(layers[::step])
        self.refresh()


def step_label(step: str) -> str:
    """A checkpoint's short name: the last part of its folder (`…/steps/step-000010` → `step-000010`)."""
    return str(step).rstrip("/").rsplit("/", 1)[-1]


def step_group_series(found: dict) -> tuple[list[str], dict[str, list[float]]]:
    """From `CacheReader.dynamics()`: the steps' short names and each reducing group's Σ Δ at every step."""
    sums = np.asarray(found["group_sums"], dtype=np.float64)
    series = {name: sums[:, GROUP_NAMES.index(name)].tolist() for name in REDUCING_GROUPS}
    return [step_label(step) for step in found["steps"]], series


class StepGroupPlot(TerminalPlot):
    """Σ Δ of each reducing group at each step of a checkpoint series (the final model's membership, last step the
    final model)."""

    def __init__(self, found: dict, **kwargs) -> None:
        super().__init__(**kwargs)
        self.labels, self.series = step_group_series(found)

    def draw(self) -> None:
        plt = self.plt
        plt.clear_data()
        steps = [float(i) for i in range(len(self.labels))]
        for name, values in self.series.items():
            plt.plot(steps, values, color=GROUP_COLORS[name], marker="dot")
        plt.hline(0.0, "gray")
        plt.xlabel("step")
        shown = max(1, len(steps) // 6)
        plt.xticks(steps[::shown], self.labels[::shown])
        self.refresh()


class ActivationHistogram(TerminalPlot):
    """How a neuron's mean activation spreads over the prompts, base model against DPO model."""

    def __init__(self, act_pre: np.ndarray, act_dpo: np.ndarray, **kwargs) -> None:
        super().__init__(**kwargs)
        self.act_pre, self.act_dpo = act_pre, act_dpo

    def draw(self) -> None:
        plt = self.plt
        plt.clear_data()
        if len(self.act_pre):
            bins = min(40, max(8, len(self.act_pre) // 4))
            plt.hist(self.act_pre.tolist(), bins, label="base", color=33)
            plt.hist(self.act_dpo.tolist(), bins, label="dpo", color=208)
        plt.title("activation per prompt")
        self.refresh()


class Dendrogram(TerminalPlot):
    """The hierarchical clustering of the top-|Δ| neurons; links below the cut share their cluster's colour."""

    PALETTE = (33, 34, 202, 170, 45, 148, 160, 220, 39, 208, 99, 71)

    def __init__(self, tree: ClusterTree, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cluster_tree = tree

    def draw(self) -> None:
        from scipy.cluster.hierarchy import dendrogram  # only this screen needs scipy

        plt = self.plt
        plt.clear_data()
        linkage = self.cluster_tree.linkage
        n_clusters = int(self.cluster_tree.attrs.get(layout.CLUSTER_COUNT, 0)) or 1
        cut = float(linkage[-(n_clusters - 1), 2]) if 1 < n_clusters <= len(linkage) else float(linkage[-1, 2]) + 1
        drawn = dendrogram(linkage, no_plot=True, color_threshold=cut, above_threshold_color="grey")
        palette: dict[str, int] = {}
        for xs, ys, color in zip(drawn["icoord"], drawn["dcoord"], drawn["color_list"]):
            if color == "grey":
                plot_color = 244
            else:
                plot_color = palette.setdefault(color, self.PALETTE[len(palette) % len(self.PALETTE)])
            plt.plot(xs, ys, color=plot_color, marker="braille")
        plt.hline(cut, 240)
        plt.xticks([])
        method = self.cluster_tree.attrs.get(layout.CLUSTER_METHOD, "")
        plt.title(f"{len(linkage) + 1} neurons, {n_clusters} clusters ({method})")
        self.refresh()
