"""The package layout's rule: dependencies flow one way, and no module imports itself back.

Each subpackage of `deit_keras` may import only the subpackages listed for it in
`ALLOWED`; docs/architecture.md must list every module and the same rule. Imports are
read from the source (`ast`), so a lazy import inside a function counts as much as one
at the top.
"""

import ast
import pathlib
import re

import pytest

from deit_keras.cli.launch import COMMANDS

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "deit_keras"
ARCHITECTURE_DOC = PACKAGE.parent / "docs" / "architecture.md"

# Leaves every package may import: the exception types user errors are raised as, and
# TensorFlow imported on first use.
EVERYONE_MAY_IMPORT = {"errors", "backend"}
# Leaves first; each entry lists what it may import (besides EVERYONE_MAY_IMPORT).
ALLOWED = {
    "errors": set(),
    "backend": set(),
    "schema": set(),
    "io": set(),
    "layers": set(),
    "data": {"schema", "io"},
    "distill": {"data", "layers", "io"},
    "models": {"layers", "distill", "data"},
    "deploy": {"io", "data", "layers", "models"},
    "inference": {"io", "data", "distill", "models", "deploy"},
    "analysis": {"io", "data", "models", "deploy"},
    "training": {
        "schema",
        "io",
        "data",
        "layers",
        "distill",
        "models",
        "deploy",
        "inference",
        "analysis",
    },
    "cli": {
        "schema",
        "io",
        "data",
        "layers",
        "distill",
        "models",
        "deploy",
        "inference",
        "analysis",
        "training",
    },
    "testing": {"io", "data", "layers", "distill", "models", "deploy", "inference", "training"},
    "testing_server": set(),  # the loopback file server of the download tests
}


def _unit(module):
    """`deit_keras.data.pipeline` -> `data`; the package's own `__init__` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path):
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _known(name, modules):
    """The longest prefix of `name` that is a module (`a.b.func` -> `a.b`)."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(path):
    """The `deit_keras` modules `path` imports (anywhere in the file)."""
    modules = _modules()
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(_known(alias.name, modules) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: use absolute imports"
            for alias in node.names:  # `from pkg import module` imports the module
                found.add(_known(f"{node.module}.{alias.name}", modules))
    return {name for name in found if name.split(".")[0] == "deit_keras"}


def test_every_subpackage_has_a_rule():
    units = {_unit(name) for name in _modules()} - {"__init__"} - set(COMMANDS)
    assert units == set(ALLOWED)


@pytest.mark.parametrize("name", sorted(_modules()))
def test_imports_follow_the_allowed_directions(name):
    modules = _modules()
    unit = _unit(name)
    targets = {_unit(target) for target in _imports(modules[name])} - {unit} - EVERYONE_MAY_IMPORT
    if unit == "__init__":
        return  # the public API may re-export anything
    if unit in COMMANDS:
        assert targets <= {"cli"}, targets
        return
    assert "__init__" not in targets, f"{name} imports the top-level package"
    assert targets <= ALLOWED[unit], f"{name} imports {sorted(targets - ALLOWED[unit])}"


def test_no_import_cycles_between_modules():
    modules = _modules()
    graph = {name: _imports(path) - {name} for name, path in modules.items()}
    # A package's __init__ importing its own submodules is not a cycle of the design.
    for name in graph:
        graph[name] = {
            target
            for target in graph[name]
            if not (name == target.rsplit(".", 1)[0] and modules[name].name == "__init__.py")
            and target != "deit_keras"
        }
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for target in graph.get(node, ()):
            if state.get(target) == "open":
                cycle = trail[trail.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_the_architecture_page_lists_every_module():
    text = ARCHITECTURE_DOC.read_text(encoding="utf-8")
    listed = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.endswith("/__init__.py"):  # a subpackage: its heading row
            listed.append(f"**{relative[: -len('__init__.py')]}**")
        else:
            listed.append(f"`{relative}`")
    assert [entry for entry in listed if entry not in text] == []


def test_the_architecture_page_states_the_enforced_rule():
    rows = re.findall(
        r"^\| `(\w+)` \| (.+) \|$", ARCHITECTURE_DOC.read_text(encoding="utf-8"), re.M
    )
    documented = {
        unit: set() if allowed == "nothing of ours" else set(re.findall(r"`(\w+)`", allowed))
        for unit, allowed in rows
    }
    assert documented == ALLOWED


def test_no_test_module_imports_another():
    """Helpers the tests share live in `deit_keras.testing` (pytest.ini: importlib mode)."""
    offenders = []
    for path in sorted((PACKAGE.parent / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").split(".")[0] == "tests"
            ):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
