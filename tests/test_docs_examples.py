"""The Python examples of the docs run as written (with fewer epochs)."""

import os
import re
import subprocess
import sys

import pytest

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def python_block_after(path: str, heading: str) -> str:
    """The first ```python block of the section `heading` of the markdown file `path`."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    section = text.split(f"\n{heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def test_training_from_python_distils_fine_tunes_and_exports(tmp_path):
    pytest.importorskip("onnxruntime")
    code = python_block_after(os.path.join(DOCS, "training.md"), "## From Python")
    # One epoch each and one block: the same calls, in a CI budget (XLA compiles per block).
    shortened = code.replace("epochs = 30", "epochs = 1").replace("epochs=10", "epochs=1")
    shortened = shortened.replace("depth=4", "depth=1")
    assert shortened.count("epochs=1") >= 2 and "epochs = 1" in shortened and "depth=1" in shortened
    process = subprocess.run(
        [sys.executable, "-c", shortened],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert process.returncode == 0, process.stderr[-3000:]
    lines = process.stdout.strip().splitlines()
    assert "'top1'" in lines[-2] and "'dist_top1'" in lines[-2], lines
    names, difference = lines[-1].rsplit(" ", 1)
    assert names == str(list("01234")) and float(difference) < 1e-4, lines[-1]
    assert "matched to the classes by name: 5 of 5 found" in process.stderr
    assert sorted(os.listdir(tmp_path)) == [
        "digits_heads.onnx",
        "digits_student.keras",
        "digits_student.keras.classes.json",
    ]
