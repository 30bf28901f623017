"""Argparse types shared by every command: a bad number or path is refused while the arguments are parsed, in
argparse's own one-line error (exit 2), before any model loads or any long work starts."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from neuron_explorer.engine.defaults import DEFAULT_DEVICE, DEFAULT_DTYPE, DTYPE_NAMES


def at_least(minimum: int):
    """The type of a whole number of at least `minimum` (e.g. 2 tokens per perplexity window)."""
    def whole_number(text: str) -> int:
        value = _integer(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small: give {minimum} or more")
        return value
    whole_number.__name__ = f"at least {minimum}"  # what argparse names in its error for a non-number
    return whole_number


positive_count = at_least(1)  # prompts, steps, tokens, batch size
non_negative = at_least(0)  # warm-up steps, patience, stored samples


def count_or_all(text: str) -> int:
    """A count where 0 means all (what the help of such options says)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative: give a count, or 0 for all")
    return value


def readable_file(text: str) -> Path:
    """An input file that exists and can be read."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{path} cannot be read: check its permissions")
    return path


def output_file(text: str) -> Path:
    """A file to write: its folder exists and accepts new files, so a long run cannot fail only at its end."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder: give a file name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {path.parent} does not exist: create it or write elsewhere")
    _check_writable(path.parent)
    return path


def output_folder(text: str) -> Path:
    """A folder to create or fill: the nearest existing folder on its path accepts new files."""
    path = Path(text).expanduser()
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} is a file, not a folder: write elsewhere")
    _check_writable(existing)
    return path


def add_device_options(group, *, dtype: bool = True, device_help: str = "") -> None:
    """--device and --dtype, with the same defaults and words in every command (engine.defaults)."""
    group.add_argument("--device", default=DEFAULT_DEVICE,
                       help=f"auto (the GPU when there is one), cpu, cuda or cuda:N{device_help} "
                            "(default: %(default)s)")
    if dtype:
        group.add_argument("--dtype", default=DEFAULT_DTYPE, choices=["auto", *DTYPE_NAMES],
                           help="weights' dtype (auto: bfloat16 on a GPU that supports it, else float32; "
                                "default: %(default)s)")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None


def _check_writable(folder: Path) -> None:
    """Create and remove a file in `folder`: the only test that also holds for root and read-only file systems."""
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".neuron-explorer-write-check.")
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot write into {folder} ({error.strerror}): write elsewhere") from None
    os.close(handle)
    os.unlink(probe)
