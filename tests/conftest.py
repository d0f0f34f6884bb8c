import atexit
import os
import shutil
import sys
import tempfile
import types

import pytest

# timm (a test-only reference) imports torchvision, whose CUDA wheel cannot register its
# C++ ops beside the CPU torch; timm's models never call those ops. transformers imports
# torchvision too once it is installed. So these two modules are empty, before any torch
# library is imported. Never in the package.
for _module in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
    sys.modules.setdefault(_module, types.ModuleType(_module))

# The same for the Python processes tests start (CLI runs, the spawned PyTorch reference of
# deit-benchmark): a sitecustomize on their PYTHONPATH, made once per test session.
_STUB_DIR = tempfile.mkdtemp(prefix="deit_keras_test_stub_")
atexit.register(shutil.rmtree, _STUB_DIR, ignore_errors=True)
with open(os.path.join(_STUB_DIR, "sitecustomize.py"), "w", encoding="utf-8") as _stub:
    _stub.write(
        "import sys, types\n"
        "for _module in ('torchvision._meta_registrations', "
        "'torchvision._autograd_registrations'):\n"
        "    sys.modules.setdefault(_module, types.ModuleType(_module))\n"
    )
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_STUB_DIR, *filter(None, [os.environ.get("PYTHONPATH")])]
)

# What the user's shell said; a library imported in-process may change it (tf2onnx's
# convert module sets it), and subprocess tests copy os.environ.
_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")


def _restore_tensorflow_log_level():
    if _TF_LOG_LEVEL is None:
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
    else:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = _TF_LOG_LEVEL


@pytest.fixture(autouse=True)
def _tensorflow_log_level_as_the_session_began():
    # Before the test too: a test module's imports (collected before any test ran) may
    # have set it, and a worker's first test then started commands with TensorFlow's
    # start-up lines shown (tests/cli/test_benchmark.py run first: "one line" failed).
    _restore_tensorflow_log_level()
    yield
    _restore_tensorflow_log_level()


def pytest_addoption(parser):
    parser.addoption(
        "--run_large",
        action="store_true",
        default=False,
        help="Also run tests marked large (slow; not run in CI).",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "large: slow test, run only with --run_large")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run_large"):
        return
    skip = pytest.mark.skip(reason="large test: pass --run_large to run it")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)
