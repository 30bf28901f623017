"""What a patch run (or the lab's patched run) can act on: one list for the palette, the lab's picker, the patch
dialog and the screens' `p` keys, so that each offers the same targets under the same names."""

from __future__ import annotations

from dataclasses import dataclass

from neuron_explorer.cache import layout
from neuron_explorer.cache.annotations import list_sets
from neuron_explorer.cache.schema import GROUP_NAMES
from neuron_explorer.engine.patching import modes

TOXIC_K = 128  # the papers' "toxic neurons" baseline: the top 128 by cos_pre (METHOD §3)


@dataclass(frozen=True)
class Target:
    """One patch target: ``key`` is what the app's actions take ("group TP↓", "toxic:128", "groups:↓", "cluster 3",
    "set NAME"), ``spec`` the `patch --set` spec it stands for, ``short`` how a run label names it ("shift TP↓"),
    ``about`` what the palette says of it, ``mode`` the mode its dialog proposes first."""

    key: str
    spec: str
    short: str
    about: str
    mode: str = modes.DEFAULT_MODE

    @property
    def title(self) -> str:
        """How the palette and the pickers name it: "toxic top-128", "all four ↓ groups", "group TP↓"."""
        return self.short if self.key in (TOXIC.key, ALL_REDUCING.key) else self.key


TOXIC = Target(
    f"toxic:{TOXIC_K}",
    f"toxic:{TOXIC_K}",
    f"toxic top-{TOXIC_K}",
    f"the {TOXIC_K} neurons most aligned with the probe (cos_pre): the papers' ablation baseline",
    mode=modes.PRESET_ABLATION,
)
ALL_REDUCING = Target(
    "groups:↓",
    "group:reducing",
    "all four ↓ groups",
    'every neuron of TP↓, TN↓, AP↓ and AN↓: the papers\' "patch all four" row',
)


def patch_targets(store) -> list[Target]:
    """Every target the open cache offers: the papers' two, each group, each cluster, each stored set."""
    targets = [TOXIC, ALL_REDUCING] + [_group(group) for group in GROUP_NAMES]
    if store.reader.has(layout.CLUSTER_SUMMARY):
        targets += [_named("cluster", str(cluster)) for cluster in store.reader.clusters()["cluster"].to_list()]
    targets += [
        _named("set", neuron_set.name, f"the {len(neuron_set.neurons):,} neurons of the stored set")
        for neuron_set in list_sets(store.path)
    ]
    return targets


def find_target(key: str) -> Target | None:
    """The target named ``key`` (whether that cluster or set exists is for the spec's resolver to say)."""
    if key in (TOXIC.key, ALL_REDUCING.key):
        return TOXIC if key == TOXIC.key else ALL_REDUCING
    kind, _, name = key.partition(" ")
    if kind == "group" and name in GROUP_NAMES:
        return _group(name)
    if kind in ("cluster", "set") and name:
        return _named(kind, name)
    return None


def _group(name: str) -> Target:
    return Target(f"group {name}", f"group:{name}", name, f"every {name} neuron")


def _named(kind: str, name: str, about: str = "") -> Target:
    return Target(f"{kind} {name}", f"{kind}:{name}", f"{kind} {name}", about or f"this {kind}'s neurons")
