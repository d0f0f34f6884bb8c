"""Imported first by the benchmarks that run a PyTorch reference (never by the package).

The test extra's torchvision (a CUDA wheel) cannot register its C++ ops beside the
CPU torch, and transformers and timm import it; their models never call those ops.
So its two op-registration modules are empty, before any torch library is imported,
here and, through PYTHONPATH, in the processes the benchmark starts (as
tests/conftest.py does for the tests).
"""

import atexit
import os
import shutil
import sys
import tempfile
import types

STUBBED = ("torchvision._meta_registrations", "torchvision._autograd_registrations")

for _module in STUBBED:
    sys.modules.setdefault(_module, types.ModuleType(_module))

_directory = tempfile.mkdtemp(prefix="deit_keras_bench_stub_")
atexit.register(shutil.rmtree, _directory, ignore_errors=True)
with open(os.path.join(_directory, "sitecustomize.py"), "w", encoding="utf-8") as _file:
    _file.write(
        "import sys, types\n"
        f"for _module in {STUBBED!r}:\n"
        "    sys.modules.setdefault(_module, types.ModuleType(_module))\n"
    )
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_directory, *filter(None, [os.environ.get("PYTHONPATH")])]
)
