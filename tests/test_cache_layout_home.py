"""Every HDF5 path and attribute name has one home, `cache/layout.py`: no module outside `cache/` spells one, and
every file the engine writes (from the command line to the writer) holds only places the layout names.

The source is read with ast, as tests/test_layout.py reads the import rules. Two kinds of finding:
- a string that is one of the file's paths (`"neurons/auroc"`, `"clusters/summary"`), or an f-string that builds
  one (`f"differences/{source}"`), anywhere;
- a string used as an HDF5 name where h5py or the cache's own reader and writer take one: an `attrs` key, a
  subscript of a `file`, the name argument of `has`, `table`, `write_table`, `write_array`, `write_attrs`,
  `require_group`, `create_dataset` and the like, or a key of the attributes `write_attrs` writes.
Ordinary words elsewhere ("layers/table" as a key binding's label, "evaluation" as a stage) are not findings.
"""

from __future__ import annotations

import ast
from pathlib import Path

import h5py
import pytest
import torch

import neuron_explorer
from neuron_explorer.cache import layout, schema
from neuron_explorer.cli import main
from neuron_explorer.engine.neurons.synthetic import build_synthetic_cache

PACKAGE = Path(neuron_explorer.__file__).parent
HOME = PACKAGE / "cache"

# Methods that take an HDF5 name as their first argument (h5py's, and CacheReader's and CacheWriter's).
NAMED_FIRST = {
    "has",
    "table",
    "attrs",
    "write_table",
    "write_array",
    "require_group",
    "create_group",
    "create_dataset",
    "require_dataset",
}
# Builders of a path from one name, each called with "" to give its prefix ("neurons/").
PATH_BUILDERS = (
    layout.neuron_path,
    layout.layer_path,
    layout.summary_path,
    layout.prompt_acts_path,
    layout.difference_path,
    layout.dynamics_path,
)


def known_paths() -> set[str]:
    """Every path a cache holds that has a "/" in it: the layout's constants and each dataset the schema names."""
    constants = {
        value
        for name, value in vars(layout).items()
        if name.isupper() and isinstance(value, str) and "/" in value and value != layout.ROOT
    }
    built = {
        *(layout.neuron_path(name) for name in (*schema.NEURON_COLUMNS, *schema.TOKEN_ARRAYS)),
        *(layout.layer_path(name) for name in schema.LAYER_COLUMNS),
        *(layout.summary_path(name) for name in schema.SUMMARY_COLUMNS),
        *(layout.prompt_acts_path(model) for model in ("pre", "dpo")),
        *(layout.difference_path(source) for source in schema.DIFFERENCE_SOURCES),
        *(layout.dynamics_path(name) for name in schema.DYNAMICS_ARRAYS),
    }
    paths = constants | built
    return paths | {"/" + path for path in paths}


PATHS = known_paths()
PREFIXES = tuple(sorted({build("") for build in PATH_BUILDERS} | {"/" + build("") for build in PATH_BUILDERS}))


def _text(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_attrs(node: ast.AST) -> bool:
    """``x.attrs`` or ``x.attrs()``: an HDF5 object's attributes, or the reader's."""
    if isinstance(node, ast.Call):
        node = node.func
    return isinstance(node, ast.Attribute) and node.attr == "attrs"


def _is_file(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "file"


def hdf5_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for each HDF5 path or name spelled in ``tree``."""
    found: list[tuple[int, str]] = []

    def flag(node: ast.AST, why: str) -> None:
        found.append((node.lineno, why))

    def flag_name(node: ast.AST, name_node: ast.AST, why: str) -> None:
        """A string where an HDF5 name goes; a known path is flagged as such already."""
        name = _text(name_node)
        if name is not None and name not in PATHS and name not in PREFIXES:
            flag(node, why.format(repr(name)))

    for node in ast.walk(tree):
        text = _text(node)
        if text is not None and (text in PATHS or text in PREFIXES):
            flag(node, f"the cache path {text!r}")
        elif isinstance(node, ast.JoinedStr) and node.values:
            first = _text(node.values[0])
            if first is not None and first.startswith(PREFIXES):
                flag(node, f"an f-string building a cache path from {first!r}")
        elif isinstance(node, ast.Subscript) and (_is_attrs(node.value) or _is_file(node.value)):
            flag_name(node, node.slice, "the HDF5 name {} as a subscript")
        elif isinstance(node, ast.Compare) and any(_is_attrs(right) or _is_file(right) for right in node.comparators):
            flag_name(node, node.left, "the HDF5 name {} tested with `in`")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            method, args = node.func.attr, node.args
            if method == "get" and _is_attrs(node.func.value):
                flag_name(node, args[0], "the attribute name {}")
            elif method in NAMED_FIRST:
                flag_name(node, args[0], f"the HDF5 name {{}} passed to {method}()")
            elif method == "write_attrs":
                if len(args) > 1:
                    flag_name(node, args[1], "the HDF5 name {} passed to write_attrs()")
                if isinstance(args[0], ast.Dict):
                    for key in args[0].keys:
                        if key is not None:
                            flag_name(key, key, "the attribute name {} written by write_attrs()")
    return found


def test_no_module_outside_cache_spells_an_hdf5_path_or_attribute_name():
    findings = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {why}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if HOME not in path.parents
        for line, why in hdf5_names(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert not findings, "use the names of neuron_explorer/cache/layout.py instead of:\n" + "\n".join(findings)


@pytest.mark.parametrize(
    "source",
    [
        'reader.has("clusters/summary")',
        'writer.write_array("/probe/direction", direction)',
        'writer.write_table(f"differences/{source}", arrays)',
        'handle.attrs["lens_rule"]',
        'reader.attrs().get("positions")',
        'tree.attrs.get("n_clusters", 0)',
        '"complete" in handle.attrs',
        'self.file["vocab"]',
        'writer.write_attrs({"steps": steps}, layout.DYNAMICS)',
        'writer.write_attrs(attrs, "layers")',
        'group.require_group("neurons")',
        'name = "neurons/" + column',
    ],
)
def test_each_way_of_spelling_a_name_is_found(source):
    assert hdf5_names(ast.parse(source))


@pytest.mark.parametrize(
    "source",
    [
        'Binding("tab", "switch_pane", "layers/table")',
        'stages = {"evaluation": file}',
        "reader.has(layout.CLUSTER_SUMMARY)",
        "writer.write_attrs({layout.LENS_RULE: rule}, layout.NEURONS)",
        'settings.get("positions", "generated")',
    ],
)
def test_ordinary_words_and_layout_names_are_not_findings(source):
    assert hdf5_names(ast.parse(source)) == []


# -- the files themselves ---------------------------------------------------------------------------------------------
CONSTANTS = {value for name, value in vars(layout).items() if name.isupper() and isinstance(value, str)}


def unmapped_places(path: Path) -> list[str]:
    """The groups, datasets and root attributes of a cache that the layout does not name. A place is named when it
    is a layout constant or built path, a group on the way to one, or a column of a table the layout names (a
    group with a `columns` attribute holds its columns as datasets: those are the table's content, not places)."""
    with h5py.File(path, "r") as handle:

        def named(name: str) -> bool:
            parent = name.rpartition("/")[0]
            return (
                name in PATHS
                or name in CONSTANTS
                or any(known.startswith(name + "/") for known in PATHS)
                or bool(parent)
                and layout.COLUMNS in handle[parent].attrs
                and named(parent)
            )

        places: list[str] = []
        handle.visit(places.append)
        unmapped = [f"/{name}" for name in places if not named(name)]
        return unmapped + [f"root attribute {key}" for key in handle.attrs if key not in CONSTANTS]


def test_a_synthetic_cache_holds_only_places_the_layout_names(tmp_path):
    assert unmapped_places(build_synthetic_cache(tmp_path / "synthetic.h5")) == []


def test_compute_from_the_command_line_writes_only_places_the_layout_names(tiny_models, tmp_path, one_torch_thread):
    """The whole way from `neuron-explorer compute`'s arguments to the writer, held-out prompts and the difference
    lens included."""
    (tmp_path / "prompts.txt").write_text("You are a stupid\nThe river runs\nWhat the hell\nAn old stone bridge\n")
    torch.save(torch.randn(32, generator=torch.Generator().manual_seed(3)), tmp_path / "probe.pt")
    output = tmp_path / "computed.h5"
    code = main(
        [
            "compute",
            "--base",
            str(tiny_models["llama"]),
            "--tuned",
            str(tiny_models["llama"]),
            "--probe",
            str(tmp_path / "probe.pt"),
            "--prompts",
            str(tmp_path / "prompts.txt"),
            "--device",
            "cpu",
            "--new-tokens",
            "2",
            "--identity-check",
            "2",
            "--cluster-top-k",
            "16",
            "-o",
            str(output),
        ]
    )
    assert code == 0
    with h5py.File(output, "r") as handle:
        assert layout.PATCH_PROMPTS in handle and layout.DIFFERENCES in handle and layout.POSITIONS in handle.attrs
    assert unmapped_places(output) == []
