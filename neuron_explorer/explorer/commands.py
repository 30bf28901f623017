"""The command palette (ctrl+p): every action of the app as a namespaced command ("sort: Δ ▼", "layer: 12")."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from textual.command import DiscoveryHit, Hit, Hits, Provider

from neuron_explorer.cache import layout
from neuron_explorer.cache.annotations import list_sets
from neuron_explorer.cache.schema import GROUP_NAMES

from .jobs import PAPER_ROWS
from .state import COLUMNS, Filters
from .targets import Target, patch_targets

if TYPE_CHECKING:
    from .app import ExplorerApp

Command = tuple[str, Callable[[], object], str]


def palette_commands(app: ExplorerApp) -> list[Command]:
    """Every command that makes sense now (none but quit while the default cache is being built)."""
    commands: list[Command] = [("app: quit", app.exit, "leave the explorer")]
    store = app.store
    if store is None:
        return commands
    commands += [(f"go: {mode}", partial(app.switch_mode, mode), f"show the {mode} screen") for mode in app.STORE_MODES]
    commands += [("help: keys", app.action_help, "every key of this screen")]
    commands += [("layer: all", partial(app.set_layer, None), "show every layer's neurons")]
    commands += [
        (f"layer: {layer}", partial(app.set_layer, layer), f"show layer {layer}'s neurons")
        for layer in range(store.info.n_layers)
    ]
    for column in COLUMNS:
        # the key disambiguates labels that differ only in case (Δ and δ), which the fuzzy matcher folds
        name = column.label if column.label == column.key else f"{column.label} ({column.key})"
        commands.append(
            (f"sort: {name} ▼ descending", partial(app.sort_by, column.key, True), f"largest {column.label} first")
        )
        commands.append(
            (f"sort: {name} ▲ ascending", partial(app.sort_by, column.key, False), f"smallest {column.label} first")
        )
    commands += [
        (f"filter: group {group}", partial(app.set_filters, Filters(group=group)), f"only {group} neurons")
        for group in GROUP_NAMES
    ]
    commands += [
        ("filter: Δ > 0", partial(app.set_filters, Filters(sign="+")), "neurons that reduce toxicity after DPO"),
        ("filter: Δ < 0", partial(app.set_filters, Filters(sign="-")), "neurons that raise it"),
        ("filter: form…", app.action_filter, "group, cluster, sign and a threshold on any column"),
        ("filter: clear", partial(app.set_filters, Filters()), "show every neuron of the layer"),
        ("jump: neuron id…", app.action_jump, "go to a neuron such as L12/N345"),
        ("mark: clear all", app.action_clear_marks, "unmark every neuron"),
        ("set: save selection", partial(app.action_save_set, "selection"), "the marked neurons as a named set"),
        ("set: save filtered view", partial(app.action_save_set, "view"), "the table's current rows as a set"),
        ("export: csv", partial(app.action_export, "csv"), "the current table to a CSV file"),
        ("export: parquet", partial(app.action_export, "parquet"), "the current table to a Parquet file"),
        (
            "export: figures",
            app.action_figures,
            "the papers' figures as SVG and PNG beside the cache (layers, "
            "group shares, recovered ± s.e., the top neuron's histograms)",
        ),
    ]
    commands += [
        (
            f"set: save group {group}",
            partial(app.action_save_set, f"group {group}"),
            f"every {group} neuron as a named set",
        )
        for group in GROUP_NAMES
    ]
    if store.reader.has(layout.CLUSTER_SUMMARY):
        clusters = store.reader.clusters()["cluster"].to_list()
        commands += [
            (f"filter: cluster {cluster}", partial(app.show_cluster, cluster), "only this cluster's neurons")
            for cluster in clusters
        ]
        commands += [
            (
                f"set: save cluster {cluster}",
                partial(app.action_save_set, f"cluster {cluster}"),
                "this cluster's neurons as a named set",
            )
            for cluster in clusters
        ]
    targets = patch_targets(store)
    commands += [
        ("patch: preset paper", app.action_patch_preset, f"the papers' comparison as one background job: {PAPER_ROWS}"),
        (
            "patch: selection",
            partial(app.action_patch, "selection"),
            "patch the marked neurons in a background run (mode, parameters, prompts)",
        ),
        ("patch: cancel run", app.action_cancel_patch, "stop the newest running patch run"),
    ]
    commands += [
        (f"patch: {target.title}", partial(app.action_patch, target.key), f"{target.about}, in a background run")
        for target in targets
    ]
    commands += _lab_commands(app, targets)
    commands += [
        (
            f"set: mark {neuron_set.name}",
            partial(app.mark_set, neuron_set.name),
            f"mark the {len(neuron_set.neurons)} neurons of the stored set ({neuron_set.description})",
        )
        for neuron_set in list_sets(store.path)
    ]
    return commands


def _lab_commands(app: ExplorerApp, targets: list[Target]) -> list[Command]:
    """The prompt lab's commands (each but `stop worker` shows the lab screen)."""
    commands: list[Command] = [
        ("lab: run prompt…", app.lab_ask_prompt, "one prompt through base, DPO and the patched model"),
        ("lab: pick a cache prompt", app.lab_pick_prompt, "run one of the cache's prompts or a stored run's sample"),
        ("lab: history", app.lab_show_history, "re-open a prompt tried in this session, without recomputing"),
        (
            "lab: apply marked neurons",
            partial(app.lab_apply, "selection"),
            "patch the marked neurons in the lab's patched run, then run again",
        ),
        ("lab: apply…", app.lab_choose_target, "choose a group, cluster or set to patch in the lab's patched run"),
        ("lab: clear intervention", app.lab_clear_intervention, "the next runs are base and DPO only"),
        ("lab: cancel request", app.lab_cancel, "stop the running lab request"),
        ("lab: restart worker", app.lab_restart, "stop the lab's model worker and start a fresh one"),
        ("lab: stop worker", app.lab_stop_worker, "stop the lab's model worker and free the memory its models hold"),
        ("lab: export result", app.lab_export, "the shown answer to a JSON file"),
    ]
    commands += [
        (f"lab: apply {target.title}", partial(app.lab_apply, target.key), f"{target.about}, in the lab's patched run")
        for target in targets
    ]
    return commands


class ExplorerCommands(Provider):
    """Offers `palette_commands`; fuzzy-matched on their names."""

    def explorer(self) -> ExplorerApp:
        """The app (`Provider.app` is any `App`); imported here: app.py imports this module."""
        from .app import ExplorerApp

        app = self.app
        assert isinstance(app, ExplorerApp)
        return app

    async def discover(self) -> Hits:
        for name, callback, help_text in palette_commands(self.explorer()):
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, callback, help_text in palette_commands(self.explorer()):
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)
