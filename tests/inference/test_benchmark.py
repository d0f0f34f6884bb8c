"""`run_benchmark`: every runtime timed in turns, ratios against the reference, the summary."""

import sys
import time

import numpy as np
import pytest

from deit_keras.errors import MissingDependencyError, UserInputError
from deit_keras.inference import bench_runtimes, benchmark, benchmark_names, host
from deit_keras.testing import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(num_classes=10)


def _sleeping(seconds):
    """A fake runtime whose call takes `seconds`, whatever the batch."""
    return bench_runtimes.Runtime(
        f"sleeps {seconds}s", (), lambda setup: lambda b: lambda: time.sleep(seconds)
    )


def test_keras_runtimes_are_timed_with_the_machine_facts(model):
    result = benchmark.run_benchmark(
        model, ["keras", "xla"], batch_size=4, warmup=1, iterations=2, rounds=2
    )
    assert list(result["runtimes"]) == ["keras", "xla"] and not result["failed"]
    for row in result["runtimes"].values():
        assert row["throughput"]["batch_size"] == 4 and row["latency"]["batch_size"] == 1
        assert row["throughput"]["calls"] == 2 and row["throughput"]["images_per_s"] > 0
        assert row["latency"]["p90_ms"] >= row["latency"]["median_ms"] > 0
        assert row["prepare_s"] > 0 and "throughput_ratio" not in row
    assert result["reference"] is None and result["model"]["params"] == model.count_params()
    assert {key: result["model"][key] for key in ("depth", "embed_dim", "patch_size")} == {
        "depth": model.depth,
        "embed_dim": model.embed_dim,
        "patch_size": model.patch_size,
    }
    assert set(result["machine"]["features"]) == set(host.CPU_FEATURES)
    assert result["machine"]["num_threads"] == host.usable_cpus()
    assert result["peak_rss_mb"] > 100
    fastest = max(
        result["runtimes"], key=lambda n: result["runtimes"][n]["throughput"]["images_per_s"]
    )
    assert result["fastest"]["throughput"] == fastest
    assert (
        result["summary"].startswith("fastest here (")
        and f"throughput {fastest} " in result["summary"]
    )


def test_ratios_against_the_reference_and_a_failed_runtime(model, monkeypatch):
    def broken(setup):
        raise RuntimeError("no kernel\nfor this")

    monkeypatch.setitem(bench_runtimes.RUNTIMES, "keras", _sleeping(0.02))
    monkeypatch.setitem(
        bench_runtimes.RUNTIMES, "xla", bench_runtimes.Runtime("broken", (), broken)
    )
    monkeypatch.setitem(bench_runtimes.RUNTIMES, "torch", _sleeping(0.04))
    result = benchmark.run_benchmark(
        model, ["keras", "xla"], batch_size=2, reference="torch", warmup=0, iterations=3
    )
    assert result["failed"] == {"xla": "RuntimeError: no kernel for this"}
    keras, torch = result["runtimes"]["keras"], result["runtimes"]["torch"]
    assert result["reference"] == "torch" and torch["throughput_ratio"] == 1.0
    assert keras["throughput_ratio"] == pytest.approx(2.0, rel=0.25)
    assert keras["latency_ratio"] == pytest.approx(0.5, rel=0.25)
    assert result["fastest"] == {"throughput": "keras", "latency": "keras"}  # not the reference
    assert "x torch)" in result["summary"] and "x torch's)" in result["summary"]


def test_fewer_iterations_than_rounds_take_one_turn_per_call(model, monkeypatch):
    monkeypatch.setitem(bench_runtimes.RUNTIMES, "keras", _sleeping(0.001))
    lines = []
    result = benchmark.run_benchmark(
        model, ["keras"], batch_size=2, warmup=0, iterations=2, rounds=3, progress=lines.append
    )
    assert result["settings"]["rounds"] == 2 and "in 2 turns" in lines[-1]
    assert result["runtimes"]["keras"]["latency"]["calls"] == 2


def test_the_flags_runtime_names_are_the_runtimes_built():
    """`deit-benchmark --help` lists `benchmark_names` before TensorFlow loads."""
    names = (*benchmark_names.DEPLOY_RUNTIMES, benchmark_names.REFERENCE)
    assert tuple(bench_runtimes.RUNTIMES) == names


def test_select_runtimes():
    assert benchmark.select_runtimes("xla, keras,xla") == (["xla", "keras"], {})
    everything, skipped = benchmark.select_runtimes("all")
    assert set(everything) | set(skipped) == set(benchmark_names.DEPLOY_RUNTIMES)
    for bad in ("xla,tensorrt", "", "torch"):
        with pytest.raises(UserInputError, match="runtimes must be"):
            benchmark.select_runtimes(bad)


def test_a_runtime_not_installed_is_named_with_its_pip_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # find_spec: not installed
    with pytest.raises(
        MissingDependencyError, match=r"litert_int8 runtime needs ai_edge_litert.*pip install"
    ):
        benchmark.select_runtimes("xla,litert_int8")
    everything, skipped = benchmark.select_runtimes("all")
    assert "litert" not in everything and skipped["litert"] == "ai_edge_litert not installed"
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError, match="torch"):
        benchmark.check_options(1, "torch", 0, None, 1)


def test_bad_settings_and_models(tmp_path):
    with pytest.raises(UserInputError, match="batch_size must be positive"):
        benchmark.check_options(0, "none", 1, None, 1)
    with pytest.raises(UserInputError, match="rounds"):
        benchmark.check_options(1, "none", 1, None, 0)
    usable = host.usable_cpus()
    benchmark.check_options(1, "none", 1, None, 1, num_threads=usable)
    with pytest.raises(UserInputError, match=f"between 1 and {usable}, the CPUs"):
        benchmark.check_options(1, "none", 1, None, 1, num_threads=usable + 1)
    with pytest.raises(UserInputError, match="Unknown model"):
        benchmark.benchmark_model("deit_huge")
    with pytest.raises(UserInputError, match="image_size and num_classes are"):
        benchmark.benchmark_model(str(tmp_path / "m.keras"), image_size=32)


def test_a_file_other_than_keras_is_not_looked_up_as_a_preset(tmp_path, monkeypatch):
    (tmp_path / "tiny.onnx").write_bytes(b"an export")
    (tmp_path / "notes.txt").write_text("x")
    cases = [
        (tmp_path / "tiny.onnx", "runtimes=onnx"),
        (tmp_path / "missing.tflite", "runtimes=litert"),
        (tmp_path / "notes.txt", "or a .keras file, not another file. Received"),
        (tmp_path, "or a .keras file"),
    ]
    for path, fragment in cases:
        with pytest.raises(UserInputError, match="model takes a preset name") as caught:
            benchmark.benchmark_model(str(path))
        assert fragment in str(caught.value) and "Valid names" not in str(caught.value)
    # A folder that shares a preset's name is not taken for a file.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deit_tiny_patch16_224").mkdir()
    assert benchmark.benchmark_model("deit_tiny_patch16_224", image_size=32).image_size == 32


def test_the_torch_reference_runs_in_a_process_of_its_own(model):
    pytest.importorskip("transformers")
    from deit_keras.inference import torch_reference

    fields = torch_reference.architecture(model)
    assert (fields.embed_dim, fields.num_classes, fields.distilled) == (32, 10, True)
    reference = torch_reference.ReferenceProcess(model, num_threads=1)
    try:
        reference.step_for(2)()
        reference.step_for(1)()
        assert reference._process.is_alive()
    finally:
        peak_mb = reference.close()
    assert peak_mb > 50 and not reference._process.is_alive()


def test_openvino_runtimes_are_timed(model):
    pytest.importorskip("openvino")
    names = ["openvino", "openvino_bf16", "openvino_int8"]
    result = benchmark.run_benchmark(model, names, batch_size=2, warmup=1, iterations=1, rounds=1)
    assert not result["failed"] and list(result["runtimes"]) == names
    for row in result["runtimes"].values():
        assert row["throughput"]["images_per_s"] > 0 and row["latency"]["median_ms"] > 0


def test_keras_bf16_times_a_bfloat16_copy_with_the_same_weights(model, tmp_path):
    setup = bench_runtimes.Setup(model=model, workdir=str(tmp_path), num_threads=1)
    step = bench_runtimes.RUNTIMES["keras_bf16"].build(setup)(3)
    expected = model.predict_on_batch(bench_runtimes.float_images(model, 3))
    logits = step()
    assert model.dtype_policy.name == "float32" and setup.model is model  # the original is kept
    assert logits.shape == expected.shape and 0 < np.abs(logits - expected).max() < 0.05


def test_cait_has_no_like_for_like_torch_reference():
    pytest.importorskip("transformers")
    from deit_keras.models.variants import build_model

    cait = build_model("cait_xxs24_224", num_classes=10, image_size=32, depth=1)
    with pytest.raises(UserInputError, match="not CaiT"):
        benchmark.run_benchmark(cait, ["keras"], batch_size=2, reference="torch", iterations=1)
