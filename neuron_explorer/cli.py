"""The `neuron-explorer` command line: one module per subcommand under neuron_explorer.commands."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from importlib import metadata
from pathlib import Path

from neuron_explorer import __version__
from neuron_explorer.commands.arguments import refuse_outputs_over_inputs
from neuron_explorer.errors import UserError

# Subcommand name -> module under neuron_explorer.commands defining add_arguments(parser) and run(args) -> int.
COMMANDS = {
    "compute": "compute",
    "explore": "explore",
    "build": "build",
    "train-probe": "train_probe",
    "make-pairs": "make_pairs",
    "train-dpo": "train_dpo",
    "evaluate": "evaluate",
    "patch": "patch",
    "lab": "lab",
    "compare-sets": "compare_sets",
    "figures": "figures",
}

DESCRIPTION = """\
See how DPO preference tuning changes a language model, neuron by neuron.

  neuron-explorer compute            record a base/tuned model pair and write an HDF5 cache
  neuron-explorer FILE.h5            open a cache in the terminal explorer
  neuron-explorer COMMAND --help     details of one command
"""


# The libraries whose versions decide the numbers (reported by --version, read from metadata without importing them).
ENGINE_LIBRARIES = ("torch", "transformers", "trl")


def version_text() -> str:
    """This tool's version and those of the engine's libraries, one per line; 'not installed' where absent."""
    lines = [f"neuron-explorer {__version__}"]
    for library in ENGINE_LIBRARIES:
        try:
            lines.append(f"{library} {metadata.version(library)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{library} not installed")
    return "\n".join(lines)


class CommandParser(argparse.ArgumentParser):
    """argparse, whose errors become one line like every other user error (no usage block): `main` prints them."""

    def error(self, message: str):
        raise UserError(f"{message} (`{self.prog} --help` lists the options)")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="neuron-explorer", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=version_text())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"neuron_explorer.commands.{module_name}")
        sub = subparsers.add_parser(
            name, help=module.HELP, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run, _data_parallel=getattr(module, "DATA_PARALLEL", False), _parser=sub)
    return parser


def check_launch(args) -> None:
    """Under torchrun or accelerate (WORLD_SIZE > 1) only the commands that deal their work out to the processes
    run; any other would run N times over, each copy writing the same files."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not args._data_parallel:
        parallel = ", ".join(
            name
            for name, module in COMMANDS.items()
            if getattr(importlib.import_module(f"neuron_explorer.commands.{module}"), "DATA_PARALLEL", False)
        )
        raise UserError(
            f"{args.command} runs in one process: start it without torchrun or accelerate launch "
            f"(data-parallel commands: {parallel})"
        )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-") and Path(argv[0]).suffix in {".h5", ".hdf5"}:
        argv.insert(0, "explore")  # `neuron-explorer FILE.h5` opens the explorer
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            args = parser.parse_args(["explore", *argv])
        check_launch(args)
        refuse_outputs_over_inputs(args._parser, args)
        code = int(args._run(args) or 0)
        if args._data_parallel and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from neuron_explorer.engine.model.distributed import leave_together

            leave_together()
        return code
    except UserError as error:
        print(f"neuron-explorer: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neuron-explorer: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
