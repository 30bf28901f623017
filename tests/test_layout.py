"""The package layout's rules (docs/architecture.md), read from the source: which package may import which, and what
starts without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import neuron_explorer

PACKAGE = Path(neuron_explorer.__file__).parent

# package -> the packages of this project it must never import (at any depth, lazily inside functions too)
FORBIDDEN = {
    "cache": ("engine", "explorer", "commands", "cli"),
    "engine": ("explorer", "commands", "cli"),
    "engine.model": (
        "engine.measure",
        "engine.alignment",
        "engine.neurons",
        "engine.patching",
        "engine.lab",
        "engine.build",
    ),
    "engine.measure": ("engine.alignment", "engine.neurons", "engine.patching", "engine.lab", "engine.build"),
    "engine.alignment": ("engine.neurons", "engine.patching", "engine.lab", "engine.build"),
    # the pair is made (alignment) before it is read: reading it needs only the model and what it is measured with
    "engine.neurons": ("engine.alignment", "engine.patching", "engine.lab", "engine.build"),
    "engine.patching": ("engine.alignment", "engine.neurons", "engine.lab", "engine.build"),
    "engine.lab": ("engine.alignment", "engine.build"),
    "explorer": ("commands", "cli"),
    "figures": ("engine", "explorer", "commands", "cli"),
    "spec": ("cache", "explorer", "commands", "cli", "figures"),
}
# What spec/ may import: besides itself, the one-line errors and the torch-free mode registry it checks against.
SPEC_IMPORTS = {"errors", "engine.patching.modes"}
# The engine modules the explorer may import: the torch-free ones.
EXPLORER_ENGINE_MODULES = {
    "engine.defaults",
    "engine.patching.modes",
    "engine.patching.neuron_sets",
    "engine.patching.overlap",
    "engine.lab.protocol",
}


def imported_modules(path: Path) -> set[str]:
    """Every neuron_explorer module `path` imports, relative names resolved, without the package prefix."""
    module = path.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".")
    parts = module.split(".")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level + (1 if path.name == "__init__.py" else 0)]
                source = ".".join(["neuron_explorer", *base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:  # `from package import module` imports the module
                submodule = f"{source}.{alias.name}"
                names.add(submodule if _is_module(submodule) else source)
    return {name.removeprefix("neuron_explorer.") for name in names if name.startswith("neuron_explorer.")}


def _is_module(name: str) -> bool:
    relative = name.removeprefix("neuron_explorer.").split(".")
    return name.startswith("neuron_explorer.") and (
        PACKAGE.joinpath(*relative).with_suffix(".py").is_file() or PACKAGE.joinpath(*relative).is_dir()
    )


def sources(package: str) -> list[Path]:
    folder = PACKAGE.joinpath(*package.split("."))
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [folder.with_suffix(".py")]


@pytest.mark.parametrize("package", FORBIDDEN)
def test_imports_go_one_way(package):
    offences = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in sources(package)
        for name in sorted(imported_modules(path))
        for forbidden in FORBIDDEN[package]
        if name == forbidden or name.startswith(forbidden + ".")
    ]
    assert not offences, offences


def test_the_explorer_imports_only_the_torch_free_engine_modules():
    used = {name for path in sources("explorer") for name in imported_modules(path) if name.startswith("engine")}
    assert used and used <= EXPLORER_ENGINE_MODULES, used - EXPLORER_ENGINE_MODULES


def test_spec_imports_only_errors_and_the_mode_registry():
    used = {name for path in sources("spec") for name in imported_modules(path) if not name.startswith("spec")}
    assert used <= SPEC_IMPORTS, used - SPEC_IMPORTS


def test_the_rule_reader_sees_a_forbidden_import(tmp_path, monkeypatch):
    """The checks above can fail: a relative import of the explorer from the cache is found."""
    fake = tmp_path / "neuron_explorer"
    (fake / "cache").mkdir(parents=True)
    (fake / "cache" / "bad.py").write_text("def f():\n    from ..explorer.app import ExplorerApp\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert imported_modules(fake / "cache" / "bad.py") == {"explorer.app"}
    with pytest.raises(AssertionError):
        test_imports_go_one_way("cache")


def test_the_command_line_and_the_explorer_start_without_torch():
    code = (
        "import sys; from neuron_explorer.cli import build_parser; build_parser(); "
        "import neuron_explorer.explorer.app; "
        "sys.exit('torch was imported' if 'torch' in sys.modules else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:] or done.stdout
