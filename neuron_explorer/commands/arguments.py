"""Argparse types shared by every command: a bad number or path is refused while the arguments are parsed, in
argparse's own one-line error (exit 2), before any model loads or any long work starts."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

from neuron_explorer.cache.atomic import check_output_folder, nearest_folder, write_error
from neuron_explorer.errors import UserError
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
    if path.exists() and not stat.S_ISREG(path.stat().st_mode):
        raise argparse.ArgumentTypeError(f"{path} is not a regular file (a device, pipe or socket), and writing "
                                         f"would replace it: give a file name")
    try:
        check_output_folder(path, "write elsewhere")
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    _check_writable(path.parent)
    return path


def output_folder(text: str) -> Path:
    """A folder to create or fill: the nearest existing folder on its path accepts new files."""
    path = Path(text).expanduser()
    existing = nearest_folder(path)
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} is a file, not a folder: write elsewhere")
    _check_writable(existing)
    return path


OUTPUT_TYPES = (output_file, output_folder)


def refuse_outputs_over_inputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """No output (an option of type `output_file` or `output_folder`) may be an input of the same command, or a
    folder holding one: `patch c.h5 --json c.h5` would turn the cache into JSON, `train-dpo --model DIR -o DIR`
    would replace the model it trains. Inputs are the other options' values that name existing paths (a model
    spec's parts around '+', a `file:` set's path)."""
    outputs, inputs = [], []
    for action in parser._actions:
        values = getattr(args, action.dest, None)
        for value in values if isinstance(values, list) else [values]:
            if not isinstance(value, (str, Path)):
                continue
            if action.type in OUTPUT_TYPES:
                outputs.append((action, Path(value).expanduser()))
                continue
            text = str(value)
            for part in {text, *text.split("+"), text.partition(":")[2]} - {""}:
                path = Path(part).expanduser()
                if path.exists():
                    inputs.append((action, path))
    for output_action, output in outputs:
        for input_action, source in inputs:
            if _same(output, source) or (output.is_dir() and source.resolve().is_relative_to(output.resolve())):
                raise UserError(f"{_flag(output_action)} {output} would overwrite {_flag(input_action)} {source}, "
                                f"which this command reads: write elsewhere")


def _same(first: Path, second: Path) -> bool:
    try:
        return first.resolve() == second.resolve() or (first.exists() and os.path.samefile(first, second))
    except OSError:
        return False


def _flag(action: argparse.Action) -> str:
    return action.option_strings[-1] if action.option_strings else action.dest
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
    error = write_error(folder)
    if error is not None:
        raise argparse.ArgumentTypeError(f"cannot write into {folder} ({error.strerror}): write elsewhere")
