"""Open a cache file in the terminal explorer. With no file, open the default cache (building it first)."""

from __future__ import annotations

HELP = "open a cache file in the terminal explorer"


def add_arguments(parser) -> None:
    parser.add_argument("file", nargs="?", help="the .h5 cache to open (default: the embedded default's cache)")


def run(args) -> int:
    from neuron_explorer.explorer.app import run_explorer

    return run_explorer(args.file)
