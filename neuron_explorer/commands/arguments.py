"""Argparse types for paths, shared by every command: a bad path is refused while the arguments are parsed, in
argparse's own one-line error (exit 2), before any model loads or any long work starts. The types of numbers live
beside the settings that use them, in spec/settings.py."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

from neuron_explorer.cache.atomic import check_output_folder, nearest_folder, write_error
from neuron_explorer.errors import UserError


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
        raise argparse.ArgumentTypeError(
            f"{path} is not a regular file (a device, pipe or socket), and writing would replace it: give a file name"
        )
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
                raise UserError(
                    f"{_flag(output_action)} {output} would overwrite {_flag(input_action)} {source}, "
                    f"which this command reads: write elsewhere"
                )


def _same(first: Path, second: Path) -> bool:
    try:
        return first.resolve() == second.resolve() or (first.exists() and os.path.samefile(first, second))
    except OSError:
        return False


def _flag(action: argparse.Action) -> str:
    return action.option_strings[-1] if action.option_strings else action.dest


def _check_writable(folder: Path) -> None:
    error = write_error(folder)
    if error is not None:
        raise argparse.ArgumentTypeError(f"cannot write into {folder} ({error.strerror}): write elsewhere")
