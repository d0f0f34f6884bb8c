"""`python -m deit_keras.evaluate --benchmarks=...`: the paper's Table 5 as a user runs it."""

import json

import pytest

from deit_keras.deploy import saving
from deit_keras.testing import (
    TINY_BENCHMARK_EXPECTED,
    assert_one_line_error,
    run_cli,
    tiny_model,
    write_benchmark_datasets,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    model = tiny_model(num_classes=1000)
    saving.save_model(model, str(root / "tiny.keras"))
    write_benchmark_datasets(root / "tfds", model)
    return root


def test_evaluate_cli_reports_table_5(prepared, tmp_path):
    output = tmp_path / "table5.json"
    process = run_cli(
        "evaluate",
        f"--model_path={prepared / 'tiny.keras'}",
        "--benchmarks=imagenet,real,v2",
        f"--data_dir={prepared / 'tfds'}",
        "--batch_size=4",
        f"--output={output}",
    )
    assert process.returncode == 0, process.stderr
    results = json.loads(output.read_text())
    for name, (right, counted) in TINY_BENCHMARK_EXPECTED.items():
        assert results["benchmarks"][name]["top1"] == pytest.approx(right / counted)
        assert results["benchmarks"][name]["num_examples"] == counted
    assert "--benchmarks=imagenet,real,v2" in results["flags"]
    lines = process.stdout.splitlines()
    assert lines[0].split() == ["benchmark", "top-1", "%", "images", "dataset"]
    assert lines[1].split()[:3] == ["ImageNet", "58.33", "12"]
    assert lines[2].split()[:3] == ["ImageNet-ReaL", "66.67", "9"]
    assert lines[3].split()[:3] == ["ImageNet-V2", "40.00", "10"]
    assert lines[4] == f"wrote {output}"


def test_evaluate_cli_benchmark_not_prepared_is_one_line(prepared, tmp_path):
    process = run_cli(
        "evaluate",
        f"--model_path={prepared / 'tiny.keras'}",
        "--benchmarks=v2",
        "--v2_variant=topimages",
        f"--data_dir={prepared / 'tfds'}",
    )
    assert_one_line_error(
        process, "tfds build imagenet_v2/topimages", f"--data_dir={prepared / 'tfds'}"
    )


def test_v2_variant_without_v2_is_one_line(prepared, tmp_path):
    process = run_cli(
        "evaluate",
        f"--model_path={prepared / 'tiny.keras'}",
        "--benchmarks=imagenet,real",
        "--v2_variant=topimages",
        f"--data_dir={prepared / 'tfds'}",
    )
    assert_one_line_error(process, "--v2_variant is for --benchmarks with v2")
