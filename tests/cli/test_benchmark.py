"""`deit-benchmark` on a tiny model: its JSON, and one line with exit 2 for bad options."""

import json
import subprocess
import sys

import pytest

from deit_keras.deploy import saving
from deit_keras.inference.host import CPU_FEATURES
from deit_keras.testing import assert_one_line_error, run_cli, tiny_model


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("benchmark") / "tiny.keras")
    saving.save_model(tiny_model(num_classes=10), path)
    return path


def test_benchmark_writes_its_json(tiny_path, tmp_path):
    output = tmp_path / "out" / "bench.json"
    process = run_cli(
        "benchmark",
        f"--model={tiny_path}",
        "--runtimes=keras,xla",
        "--batch_size=3",
        "--warmup=1",
        "--iterations=2",
        "--rounds=2",
        f"--json={output}",
    )
    assert process.returncode == 0, process.stderr
    result = json.loads(output.read_text())
    assert list(result["runtimes"]) == ["keras", "xla"] and not result["failed"]
    assert result["runtimes"]["keras"]["throughput"]["batch_size"] == 3
    assert result["runtimes"]["xla"]["latency"]["median_ms"] > 0
    assert set(result["machine"]["features"]) == set(CPU_FEATURES) and result["machine"]["model"]
    assert result["peak_rss_mb"] > 100 and result["model"]["image_size"] == 32
    assert result["command"].startswith("deit-benchmark --model=")
    assert result["summary"] in process.stdout.splitlines()
    assert [line.split()[0] for line in process.stdout.splitlines()[1:3]] == ["keras", "xla"]


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--model=deit_tiny_patch16_224", "--runtimes=xla,tensorrt"], "runtimes must be"),
        (["--model=deit_tiny_patch16_224", "--batch_size=0"], "batch_size must be positive"),
        (["--model=MODEL", "--image_size=64", "--runtimes=xla"], "image_size and num_classes"),
        (["--model=exported/tiny.onnx"], "exported from with runtimes=onnx"),
        (["--model=MODEL", "--iterations=2", "--time_budget=1"], "not both"),
        (["--model=MODEL", "--json=MODEL"], "would replace the model file"),
        (["--model=MODEL", "--json=MODEL.classes.json"], "would replace the model file"),
    ],
)
def test_bad_options_give_one_line(tiny_path, flags, fragment):
    flags = [flag.replace("MODEL", tiny_path) for flag in flags]
    assert_one_line_error(run_cli("benchmark", *flags), fragment)


def test_a_runtime_not_installed_gives_one_line():
    hide = "import sys; sys.modules['onnxruntime'] = None; sys.argv[0] = 'deit-benchmark'; "
    launch = "from deit_keras.cli.launch import launch; launch('benchmark')"
    process = subprocess.run(
        [sys.executable, "-c", hide + launch, "--model=deit_tiny_patch16_224", "--runtimes=onnx"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_line_error(process, "onnx runtime needs onnxruntime", "pip install")


def test_nothing_timed_is_a_failure(tmp_path):
    path = str(tmp_path / "gray.keras")  # one channel: every runtime feeds RGB images
    saving.save_model(tiny_model(num_classes=10, in_channels=1), path)
    output = tmp_path / "bench.json"
    process = run_cli(
        "benchmark",
        f"--model={path}",
        "--runtimes=keras,xla",
        "--iterations=1",
        "--warmup=0",
        "--rounds=1",
        f"--json={output}",
    )
    assert process.returncode == 2 and "not timed" in process.stdout
    assert "error: No runtime could be timed" in process.stderr
    failed = [line for line in process.stderr.splitlines() if " failed: " in line]
    assert [line.split()[0] for line in failed] == ["keras", "xla"]  # no glog prefix
    assert json.loads(output.read_text())["failed"].keys() == {"keras", "xla"}
