"""Compare neuron sets with each other and with chance: for every pair, the sizes, the overlap and the Jaccard
index, beside the same for random sets with each set's count per layer (a permutation within layers; METHOD §8).
The chance overlap's mean and spread are exact (a hypergeometric per layer); the chance Jaccard is the mean and
standard deviation over --draws random placements, and p is the share of those whose overlap reaches the
observed one.

Sets are the specs of `patch --set` (one set per argument): group:TP↓, toxic:128, auroc:128, cluster:3,
top:128:contribution, set:NAME, ... With none given: the four reducing groups, toxic:128, auroc:128 (where the
cache has it) and top:128:contribution.
"""

from __future__ import annotations

from pathlib import Path

from neuron_explorer.engine.defaults import default_cache_path
from neuron_explorer.spec.settings import positive_count

HELP = "overlap and Jaccard of neuron sets against layer-matched random sets"


def add_arguments(parser) -> None:
    parser.add_argument("file", type=Path, help=f"the cache (e.g. {default_cache_path()})")
    parser.add_argument(
        "sets",
        nargs="*",
        metavar="SET",
        help="neuron-set specs, at least two (default: the groups, toxic:128, auroc:128, top Δ)",
    )
    parser.add_argument(
        "--draws",
        type=positive_count,
        default=2000,
        help="random layer-matched placements for the chance spread (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of those draws (default: %(default)s)")


def run(args) -> int:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from neuron_explorer.cache.reader import CacheReader
    from neuron_explorer.engine.patching.overlap import compare_all, default_specs, format_row, resolve_masks

    with CacheReader(args.file) as reader:
        masks = resolve_masks(reader, args.sets or default_specs(reader))
        info = reader.info
    results = compare_all(masks, draws=args.draws, seed=args.seed)
    table = Table(
        title=f"neuron sets against layer-matched chance — {args.file} ({info.n_layers} layers × {info.d_mlp:,})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    rows = [format_row(result) for result in results]
    widths = {column: max(len(column), *(len(row[column]) for row in rows)) for column in rows[0]}
    for column, width in widths.items():
        table.add_column(column, justify="left" if column in ("A", "B") else "right", no_wrap=True, min_width=width)
    for row in rows:
        table.add_row(*row.values())
    console = Console()
    console.width = max(console.width, sum(widths.values()) + 3 * len(widths))  # cut to 80 columns, it hides numbers
    console.print(table)
    console.print(
        f"∩ overlap, J Jaccard, × overlap over its chance mean. Chance: each set's neurons placed at "
        f"random within their layers; ∩ mean±sd exact, J over {args.draws} draws (seed {args.seed}); p: "
        f"share of draws with at least the observed overlap"
    )
    return 0
