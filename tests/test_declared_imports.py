"""Every third-party module the code imports comes from a requirement setup.py declares.

A fresh virtual environment has only what setup.py names: an import of anything else
passes on a machine where it was installed by hand and fails everywhere else.
"""

import ast
import importlib.metadata
import os
import re
import runpy
import sys
from unittest import mock

import setuptools
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ("deit_keras", "tests", "benchmarks")
FIRST_PARTY = {"deit_keras", "tests", "benchmarks", "setup"}
# Imported only in another interpreter that has it, never in ours (and keras-hub pins
# its own keras): benchmarks/throughput.py's optional keras-hub comparison.
NOT_OURS_TO_DECLARE = {"keras_hub"}


def _normalized(distribution):
    return re.sub(r"[-_.]+", "-", distribution).lower()


def declared_distributions():
    """Names in install_requires and every extra of setup.py (read by running it), and the
    build system's requirements in pyproject.toml."""
    with mock.patch.object(setuptools, "setup") as setup:
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="__main__")
        finally:
            os.chdir(cwd)
    kwargs = setup.call_args.kwargs
    requirements = list(kwargs["install_requires"])
    for extra in kwargs["extras_require"].values():
        requirements += extra
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as pyproject:
        requirements += tomllib.load(pyproject)["build-system"]["requires"]
    return {_normalized(re.match(r"[A-Za-z0-9_.\-]+", r).group(0)) for r in requirements}


def imported_modules():
    """{top-level module: [files]} of every absolute import under SCANNED."""
    found = {}
    for folder in SCANNED:
        for directory, _, files in os.walk(os.path.join(ROOT, folder)):
            siblings = {name[:-3] for name in files if name.endswith(".py")}
            for name in (f for f in files if f.endswith(".py")):
                path = os.path.join(directory, name)
                for module in _imports(path):
                    top = module.split(".")[0]
                    if top not in siblings:  # benchmarks import their neighbours
                        found.setdefault(top, []).append(os.path.relpath(path, ROOT))
    return found


def _imports(path):
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module


def undeclared_imports(found, declared, providers):
    """[(module, files)] that neither the standard library nor a declared requirement gives."""
    missing = []
    for module, files in sorted(found.items()):
        if module in sys.stdlib_module_names or module in FIRST_PARTY | NOT_OURS_TO_DECLARE:
            continue
        distributions = {_normalized(d) for d in providers.get(module, [])}
        if not distributions & declared:
            missing.append((module, sorted(set(files))))
    return missing


def test_every_third_party_import_is_declared_in_setup_py():
    missing = undeclared_imports(
        imported_modules(), declared_distributions(), importlib.metadata.packages_distributions()
    )
    assert not missing, f"imported but not declared in setup.py: {missing}"


def test_the_guard_finds_an_undeclared_import():
    providers = {"hypothesis": ["hypothesis"], "numpy": ["numpy"]}
    found = {"hypothesis": ["tests/a.py"], "numpy": ["b.py"], "json": ["c.py"]}
    assert undeclared_imports(found, {"numpy"}, providers) == [("hypothesis", ["tests/a.py"])]
    assert undeclared_imports(found, {"numpy", "hypothesis"}, providers) == []


def test_the_scan_sees_imports_inside_functions():
    found = imported_modules()
    assert "tests/test_declared_imports.py" in found["setuptools"]
    assert any(path.startswith("deit_keras/") for path in found["tensorflow"])
    assert "benchmarks/throughput.py" in found["torch"]  # imported inside a worker function
