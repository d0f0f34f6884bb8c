"""deit-export's --output: what is there already is replaced only if it is an earlier export."""

import os

import numpy as np

from deit_keras.deploy import saving
from deit_keras.testing import assert_one_line_error, run_cli, tiny_model, user_stderr


def test_export_keeps_a_folder_that_is_not_an_earlier_savedmodel(tmp_path):
    mine = tmp_path / "runs" / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "sub" / "notes.txt").write_text("notes")
    saving.save_model(tiny_model(), str(mine / "model.keras"))
    before = sorted(os.listdir(mine))
    process = run_cli("export", f"--model_path={mine / 'model.keras'}", f"--output={mine}")
    assert_one_line_error(process, "without saved_model.pb", str(mine))
    assert sorted(os.listdir(mine)) == before

    # An earlier SavedModel is replaced, but not when it holds the model being exported.
    (mine / "saved_model.pb").write_bytes(b"an earlier export")
    process = run_cli("export", f"--model_path={mine / 'model.keras'}", f"--output={mine}")
    assert_one_line_error(process, "--output would replace --model_path", str(mine))
    assert sorted(os.listdir(mine)) == sorted([*before, "saved_model.pb"])


def test_export_an_opset_tf2onnx_cannot_write_is_one_line(tmp_path):
    model_path, out = tmp_path / "m.keras", tmp_path / "m.onnx"
    saving.save_model(tiny_model(), str(model_path))
    process = run_cli(
        "export", f"--model_path={model_path}", "--format=onnx", "--opset=19", f"--output={out}"
    )
    assert_one_line_error(process, "opset must be an integer from 9 to", "opset=19")
    assert not out.exists()


def test_export_to_savedmodel_needs_no_onnx_packages(tmp_path):
    """tf2onnx and onnx come with the [deploy] extra; a SavedModel needs neither."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\nsys.modules['onnx'] = None\nsys.modules['tf2onnx'] = None\n"
    )
    model_path, out = tmp_path / "m.keras", tmp_path / "sm"
    saving.save_model(tiny_model(), str(model_path))
    path = os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")])
    process = run_cli(
        "export", f"--model_path={model_path}", f"--output={out}", env={"PYTHONPATH": path}
    )
    assert process.returncode == 0, process.stderr
    assert (out / "saved_model.pb").exists()


def test_an_onnx_export_prints_its_line_and_nothing_on_stderr(tmp_path):
    """Keras' tf2onnx patch asked numpy for `np.object`: a FutureWarning on every export."""
    model_path, out = tmp_path / "m.keras", tmp_path / "m.onnx"
    saving.save_model(tiny_model(), str(model_path))
    process = run_cli("export", f"--model_path={model_path}", "--format=onnx", f"--output={out}")
    assert process.returncode == 0, process.stderr
    assert process.stdout.startswith(f"Exported {model_path} to {out}"), process.stdout
    assert not user_stderr(process), process.stderr


def test_predict_on_a_litert_export_prints_no_delegate_line(tmp_path):
    """LiteRT's first run printed 'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.'
    on stderr, among the command's own lines."""
    from PIL import Image

    from deit_keras.deploy import export_formats

    out = tmp_path / "m.tflite"
    export_formats.export_model(tiny_model(), str(out), "litert")
    image = tmp_path / "image.png"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(image)
    process = run_cli("predict", f"--model_path={out}", "--top_k=1", str(image))
    assert process.returncode == 0, process.stderr
    assert "XNNPACK" not in process.stderr, process.stderr
    assert user_stderr(process) == [
        "(no class names stored with the model: classes shown as class_<index>)"
    ], process.stderr


def _hiding(tmp_path, *modules):
    """PYTHONPATH under which `modules` fail to import, as if not installed."""
    hide = tmp_path / "hide"
    hide.mkdir(exist_ok=True)
    lines = [f"sys.modules[{module!r}] = None" for module in modules]
    (hide / "sitecustomize.py").write_text("\n".join(["import sys", *lines, ""]))
    return {"PYTHONPATH": os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")])}


def test_an_export_or_a_run_whose_package_is_missing_is_one_line_with_the_pip_command(tmp_path):
    """A missing converter or runtime of the [deploy] extra was an internal error (exit 70)."""
    model_path = tmp_path / "m.keras"
    saving.save_model(tiny_model(), str(model_path))
    cases = [
        ("tf2onnx", ["--format=onnx", f"--output={tmp_path / 'm.onnx'}"]),
        ("onnxruntime", ["--format=onnx", "--optimize", f"--output={tmp_path / 'm.onnx'}"]),
        ("openvino", ["--format=openvino", f"--output={tmp_path / 'm.xml'}"]),
        (
            "nncf",
            [
                "--format=openvino",
                "--quantize=int8",
                "--calibration_dataset=digits",
                f"--output={tmp_path / 'm.xml'}",
            ],
        ),
    ]
    for module, flags in cases:
        env = _hiding(tmp_path, module)
        process = run_cli("export", f"--model_path={model_path}", *flags, env=env)
        assert_one_line_error(process, f"needs {module}", "pip install 'deit_keras[deploy]'")
    assert sorted(os.listdir(tmp_path)) == ["hide", "m.keras"]

    exported = tmp_path / "m.tflite"
    from deit_keras.deploy import export_formats

    export_formats.export_model(tiny_model(), str(exported), "litert")
    from PIL import Image

    image = tmp_path / "image.png"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(image)
    env = _hiding(tmp_path, "ai_edge_litert")
    process = run_cli("predict", f"--model_path={exported}", str(image), env=env)
    assert_one_line_error(process, "Running a .tflite file needs ai_edge_litert", "pip install")
    process = run_cli("evaluate", f"--model_path={exported}", "--dataset=digits", env=env)
    assert_one_line_error(process, "Running a .tflite file needs ai_edge_litert", "pip install")


def test_export_flags_for_another_export_are_one_line(tmp_path):
    model_path = tmp_path / "m.keras"
    saving.save_model(tiny_model(), str(model_path))
    process = run_cli(
        "export",
        f"--model_path={model_path}",
        "--format=litert",
        "--opset=13",
        f"--output={tmp_path / 'm.tflite'}",
    )
    assert_one_line_error(process, "--opset is for --format=onnx", "--format=litert")
    process = run_cli(
        "export",
        f"--model_path={model_path}",
        "--format=litert",
        "--quantize=float16",
        "--calibration_images=50",
        f"--output={tmp_path / 'm.tflite'}",
    )
    assert_one_line_error(process, "--calibration_images is for --quantize=int8", "float16")
    assert not (tmp_path / "m.tflite").exists()
    # An export's own flags.txt (every flag, defaults included) replays it.
    process = run_cli(
        "export",
        f"--model_path={model_path}",
        f"--output={tmp_path / 'sm'}",
        "--opset=17",
        "--calibration_images=200",
    )
    assert process.returncode == 0, process.stderr
    flagfile = tmp_path / "sm" / "flags.txt"
    assert "--opset=17" in flagfile.read_text()
    process = run_cli("export", f"--flagfile={flagfile}", f"--output={tmp_path / 'sm2'}")
    assert process.returncode == 0, process.stderr


def test_optimize_for_another_format_than_onnx_is_one_line(tmp_path):
    model_path = tmp_path / "m.keras"
    saving.save_model(tiny_model(), str(model_path))
    process = run_cli(
        "export",
        f"--model_path={model_path}",
        "--format=litert",
        "--optimize",
        f"--output={tmp_path / 'm.tflite'}",
    )
    assert_one_line_error(process, "--optimize is for --format=onnx", "--format=litert")
    assert not (tmp_path / "m.tflite").exists()
