"""Draw the papers' figures from a cache, each as SVG and PNG (matplotlib), with its provenance in its metadata:

  layers      Σ Δ per layer, stacked by the four ↓ groups (up) and their ↑ mirrors (down)
  shares      each group's share: v1 (the cache's groups, the default) and v3 beside it
  recovered   the fraction of DPO's effect each stored patch run recovers, ± one standard error
  neuron      one neuron's per-prompt mean activation, base against DPO (--neuron; default: the largest Δ)

The files go to DIR (default: FILE's folder, in FILE-figures/), named FILE-FIGURE.svg and .png.
"""

from __future__ import annotations

from pathlib import Path

from neuron_explorer.engine.defaults import default_cache_path

HELP = "draw the papers' figures from a cache as SVG and PNG"
# neuron_explorer.figures.FIGURES, not imported: it loads polars and h5py, and --help stays fast without them
FIGURES = ("layers", "shares", "recovered", "neuron")


def add_arguments(parser) -> None:
    parser.add_argument("file", nargs="?", type=Path, default=None, help=f"the cache (default: {default_cache_path()})")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        metavar="DIR",
        help="the folder for the figures (default: FILE-figures/ beside the cache)",
    )
    parser.add_argument(
        "--neuron",
        default=None,
        metavar="L12/N345",
        help="the neuron of the activation histogram (default: the one with the largest Δ)",
    )
    parser.add_argument(
        "--only", action="append", choices=FIGURES, default=None, help="draw only this figure (repeatable)"
    )


def run(args) -> int:
    from neuron_explorer.cache.reader import CacheReader, parse_neuron_id
    from neuron_explorer.errors import UserError
    from neuron_explorer.figures import write_figures

    path = Path(args.file or default_cache_path()).expanduser()
    with CacheReader(path) as reader:  # a bad file or neuron id fails here, before any figure is drawn
        if args.neuron:
            layer, index = parse_neuron_id(args.neuron)
            if not (0 <= layer < reader.info.n_layers and 0 <= index < reader.info.d_mlp):
                raise UserError(
                    f"{args.neuron} does not exist: layers 0–{reader.info.n_layers - 1}, "
                    f"neurons 0–{reader.info.d_mlp - 1}"
                )
    if args.output is not None and args.output.exists() and not args.output.is_dir():
        raise UserError(f"{args.output} is not a folder")
    written = write_figures(path, args.output, neuron=args.neuron, which=tuple(args.only or FIGURES))
    for file in written:
        print(file)
    return 0
