"""LiteRT and ONNX exports: parity with the Keras model, quantization, and running them back.

The models are tiny DeiTs trained for a few epochs on the embedded digits
data, so the logits are those of a real classifier (|logits| up to ~5-10)
and the images are real eval crops.
"""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import onnx
import pytest

from deit_keras.data import pipeline
from deit_keras.deploy import (
    export_formats,
    export_options,
    litert_export,
    onnx_export,
    openvino_export,
    runtimes,
    saved_model,
    saving,
)
from deit_keras.deploy.calibration import eval_crops
from deit_keras.deploy.signatures import fixed_size_function
from deit_keras.errors import UserInputError
from deit_keras.inference.evaluate import evaluate_model
from deit_keras.inference.predict import predict_images
from deit_keras.models import precision
from deit_keras.testing import (
    assert_one_line_error,
    random_images,
    run_cli,
    tiny_model,
    user_stderr,
)

# fp32 exports against the Keras graph, absolute, on logits of a trained model.
FP32_ATOL = 1e-5
# Top-1 agreement with the fp32 model on the 360 digits eval images (the bar
# stated in docs/deployment.md) and the largest file size relative to fp32.
QUANTIZED_BARS = {"float16": (0.99, 0.70), "dynamic_int8": (0.97, 0.60), "int8": (0.90, 0.60)}


def _trained(distilled):
    keras.utils.set_random_seed(0)
    model = tiny_model(distilled=distilled)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3), distillation="none")
    train = pipeline.make_dataset(
        "digits", "train", image_size=32, batch_size=64, training=False, seed=0
    )
    model.fit(train, epochs=4, verbose=0)
    return model


@pytest.fixture(scope="module")
def models():
    return {"distilled": _trained(True), "plain": _trained(False)}


NAMES = [f"c{i}" for i in range(10)]


@pytest.fixture(scope="module")
def exports(models, tmp_path_factory):
    """`{(kind, format): path}`: each model exported once as fp32 LiteRT and ONNX."""
    root = tmp_path_factory.mktemp("exports")
    paths = {}
    for kind, model in models.items():
        for export_format, suffix in {**export_options.SUFFIXES, "saved_model": "_sm"}.items():
            path = str(root / f"{kind}{suffix}")
            names = NAMES if kind == "distilled" else None
            export_formats.export_model(model, path, export_format, class_names=names)
            paths[kind, export_format] = path
    return paths


@pytest.fixture(scope="module")
def crops(models):
    """The digits eval split as the uint8 crops the fixed-size exports take."""
    return eval_crops("digits", 10_000, 32, models["distilled"].preprocessing, split="eval")


def _keras_outputs(model, crops):
    return {k: np.asarray(v) for k, v in fixed_size_function(model)(crops).items()}


def _export(model, tmp_path, export_format, **options):
    path = str(tmp_path / f"m{export_options.SUFFIXES[export_format]}")
    export_formats.export_model(model, path, export_format, **options)
    return path


@pytest.mark.parametrize("export_format", ["litert", "onnx", "saved_model"])
@pytest.mark.parametrize("kind", ["distilled", "plain"])
def test_fp32_exports_match_keras(models, exports, crops, export_format, kind):
    model = models[kind]
    exported, _ = runtimes.load_exported(exports[kind, export_format])
    expected = _keras_outputs(model, crops)
    got = exported.run_uint8(crops)
    assert sorted(got) == sorted(expected)
    assert ("dist_logits" in got) == (kind == "distilled")
    assert np.abs(expected["logits"]).max() > 3  # a trained classifier, not near-zero logits
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=FP32_ATOL, err_msg=name)
    # Batch size is dynamic: one image gives that image's row.
    np.testing.assert_allclose(
        exported.run_uint8(crops[3:4])["logits"], expected["logits"][3:4], atol=FP32_ATOL
    )


def test_onnx_graph_has_only_standard_ops_and_an_exact_gelu(exports):
    path = exports["distilled", "onnx"]
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    op_types = {node.op_type for node in proto.graph.node}
    assert "Erf" in op_types and "Erfc" not in op_types
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert onnx_export.read_onnx_config(path)["opset"] == 17


@pytest.mark.parametrize("quantize", ["float16", "dynamic_int8", "int8"])
def test_quantized_litert_agrees_with_fp32(models, exports, crops, tmp_path, quantize):
    model = models["distilled"]
    fp32 = exports["distilled", "litert"]
    calibration = eval_crops("digits", 64, 32, model.preprocessing) if quantize == "int8" else None
    path = _export(
        model, tmp_path / quantize, "litert", quantize=quantize, calibration_images=calibration
    )
    reference = runtimes.load_exported(fp32)[0].run_uint8(crops)["logits"].argmax(-1)
    exported, _ = runtimes.load_exported(path)
    agreement = np.mean(exported.run_uint8(crops)["logits"].argmax(-1) == reference)
    min_agreement, max_size = QUANTIZED_BARS[quantize]
    assert agreement >= min_agreement, (quantize, agreement)
    assert os.path.getsize(path) <= max_size * os.path.getsize(fp32)
    assert exported.config["quantize"] == quantize


def test_exported_files_evaluate_and_predict_like_the_keras_model(models, exports):
    model = models["distilled"]
    evaluation = pipeline.make_dataset(
        "digits", "eval", image_size=32, batch_size=128, training=False
    )
    expected = evaluate_model(model, evaluation)
    images = [np.asarray(image) for image in eval_crops("digits", 3, 32, model.preprocessing)]
    keras_top = predict_images(model, images, NAMES, top_k=2)
    for export_format in ("litert", "onnx", "saved_model"):  # the SavedModel: serving_crops
        exported, class_names = runtimes.load_for_inference(exports["distilled", export_format])
        assert class_names == NAMES
        got = evaluate_model(exported, evaluation)
        for key in ("top1", "cls_top1", "dist_top1"):
            assert got[key] == pytest.approx(expected[key], abs=1e-9), key
        top = predict_images(exported, images, class_names, top_k=2)
        assert [[n for n, _, _ in row] for row in top] == [[n for n, _, _ in r] for r in keras_top]


def test_serving_config_is_embedded(models, tmp_path):
    model = models["plain"]
    litert = _export(model, tmp_path, "litert", crop_pct=0.9)
    onnx_path = _export(model, tmp_path, "onnx", crop_pct=0.9)
    for config in (
        litert_export.read_litert_config(litert),
        onnx_export.read_onnx_config(onnx_path),
    ):
        assert config["image_size"] == 32 and config["num_classes"] == 10
        assert config["crop_pct"] == 0.9 and not config["distilled"]
        assert config["class_names_source"] == "index"
        assert sorted(config["outputs"]) == ["cls_logits", "logits", "probabilities"]


@pytest.mark.parametrize("level", [None, "1"])
def test_onnx_export_leaves_the_tensorflow_log_level_as_it_was(tmp_path, level):
    """tf2onnx sets TF_CPP_MIN_LOG_LEVEL on import and while converting; a fresh interpreter
    shows the export keeps what the process had. Compared with the level once the
    libraries are imported: importing TensorFlow imports JAX where it is installed (the
    TFLite converter's), and JAX sets the level to 1 when unset."""
    code = (
        "import os\n"
        "from deit_keras.deploy import onnx_export\n"
        "from deit_keras.testing import tiny_model\n"
        "model = tiny_model()\n"
        "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))\n"
        f"onnx_export.export_onnx(model, {str(tmp_path / 'm.onnx')!r})\n"
        "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    process = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert process.returncode == 0, process.stderr[-3000:]
    before, after = process.stdout.strip().splitlines()[-2:]
    assert after == before
    if level is not None:
        assert after == level


def test_calibration_images_come_from_the_train_split_in_eval_mode(monkeypatch):
    """int8 calibration (the export CLI takes `eval_crops`' default split) reads training
    images through the eval transform: ranges fitted on the eval split would be fitted on
    the images the quantized export is then scored on, and augmented views are not what
    the export will see."""
    from deit_keras.data.preprocessing import Preprocessing
    from deit_keras.deploy import calibration

    calls = []

    def recording_make_dataset(name, split, **kwargs):
        calls.append((name, split, kwargs))
        return [(np.zeros((4, 8, 8, 3), np.float32), np.zeros((4, 10), np.float32))]

    monkeypatch.setattr(calibration, "make_dataset", recording_make_dataset)
    crops = calibration.eval_crops("digits", 4, 8, Preprocessing())
    assert crops.shape == (4, 8, 8, 3) and crops.dtype == np.uint8
    [(name, split, kwargs)] = calls
    assert (name, split, kwargs["training"]) == ("digits", "train", False)


def test_bad_export_options_are_one_line_errors(models, tmp_path):
    cases = [
        ("tflite", str(tmp_path / "m.tflite"), "none", "format must be one of"),
        ("litert", str(tmp_path / "m.onnx"), "none", "single .tflite file"),
        ("onnx", str(tmp_path / "m.tflite"), "none", "single .onnx file"),
        ("saved_model", str(tmp_path / "m.tflite"), "none", "SavedModel is a directory"),
        ("onnx", str(tmp_path / "m.onnx"), "float16", "quantize='float16' is for format litert"),
        ("litert", str(tmp_path / "m.tflite"), "int4", "quantize must be one of"),
    ]
    for export_format, path, quantize, message in cases:
        with pytest.raises(ValueError, match=message) as caught:
            export_options.check_export_options(export_format, path, quantize)
        assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="calibration_images"):
        litert_export.export_litert(models["plain"], str(tmp_path / "q.tflite"), "int8")
    with pytest.raises(ValueError, match="opset"):
        onnx_export.export_onnx(models["plain"], str(tmp_path / "o.onnx"), opset=7)
    assert not os.listdir(tmp_path)


def test_what_is_at_the_output_is_replaced_only_if_an_earlier_export(tmp_path):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "sub" / "notes.txt").write_text("notes")
    for name in ("d.onnx", "d.tflite", "w.bin"):
        (tmp_path / name).mkdir()
    (tmp_path / "a_file").write_text("keep")
    cases = [
        ("saved_model", mine, "existing directory without saved_model.pb"),
        ("saved_model", tmp_path / "a_file", "existing file, expected a directory"),
        ("onnx", tmp_path / "d.onnx", "existing directory, expected a file"),
        ("litert", tmp_path / "d.tflite", "existing directory, expected a file"),
        ("openvino", tmp_path / "w.xml", "w.bin"),  # the weights beside the .xml
    ]
    for export_format, path, message in cases:
        with pytest.raises(ValueError, match=message) as caught:
            export_options.check_export_options(export_format, str(path))
        assert "\n" not in str(caught.value) and str(path.parent) in str(caught.value)
    # The library refuses before exporting, whichever entry point.
    model = tiny_model()
    with pytest.raises(ValueError, match="without saved_model.pb"):
        export_formats.export_model(model, str(mine))
    with pytest.raises(ValueError, match="without saved_model.pb"):
        saved_model.export_saved_model(model, str(mine))
    assert (mine / "sub" / "notes.txt").read_text() == "notes" and len(os.listdir(mine)) == 1
    (mine / "saved_model.pb").write_bytes(b"an earlier export")
    export_options.check_export_options("saved_model", str(mine))


def test_an_opset_tf2onnx_cannot_write_is_a_one_line_error():
    from tf2onnx import constants

    newest = max(constants.OPSET_TO_IR_VERSION)
    for opset in (newest + 1, 99):
        with pytest.raises(ValueError, match=f"from 9 to {newest} .*Received: opset={opset}"):
            onnx_export.check_opset(opset)
    onnx_export.check_opset(newest)


def test_failed_conversion_leaves_no_file(models, tmp_path, monkeypatch):
    path = tmp_path / "m.tflite"
    path.write_bytes(b"previous good file")

    def broken(*args, **kwargs):
        raise RuntimeError("converter failed")

    monkeypatch.setattr(litert_export, "_with_metadata", broken)
    with pytest.raises(RuntimeError):
        litert_export.export_litert(models["plain"], str(path))
    assert path.read_bytes() == b"previous good file"
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_runtimes_reject_files_of_the_wrong_kind(tmp_path):
    text = tmp_path / "notes.tflite"
    text.write_text("not a model")
    onnx_text = tmp_path / "notes.onnx"
    onnx_text.write_text("not a model")
    for path, message in [(text, "not a readable LiteRT"), (onnx_text, "not an ONNX model")]:
        with pytest.raises(ValueError, match=message):
            runtimes.load_exported(str(path))
    with pytest.raises(FileNotFoundError, match="No model file"):
        runtimes.load_exported(str(tmp_path / "missing.onnx"))


@pytest.fixture(scope="module")
def untrained_exports(tmp_path_factory):
    """`{format: path}`: an untrained tiny model as LiteRT and OpenVINO files, to break."""
    root = tmp_path_factory.mktemp("untrained")
    model = tiny_model()
    return {f: _export(model, root, f) for f in ("litert", "openvino")}


def test_a_truncated_litert_file_is_a_one_line_error(untrained_exports, tmp_path):
    content = open(untrained_exports["litert"], "rb").read()
    for size in (50_000, len(content) * 9 // 10, len(content) - 64):
        path = tmp_path / f"cut{size}.tflite"
        path.write_bytes(content[:size])
        with pytest.raises(ValueError, match="not a readable LiteRT") as caught:
            runtimes.load_exported(str(path))
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_an_openvino_xml_without_its_bin_names_the_bin(untrained_exports, tmp_path):
    xml = tmp_path / "alone.xml"
    xml.write_bytes(open(untrained_exports["openvino"], "rb").read())
    with pytest.raises(ValueError, match="weights file .*alone.bin is missing") as caught:
        runtimes.load_exported(str(xml))
    assert "\n" not in str(caught.value)
    # A .bin that is not the one written with the .xml: its digest differs.
    (tmp_path / "alone.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="alone.bin is not the weights file exported with"):
        runtimes.load_exported(str(xml))
    # An IR without the digest: the runtime's reason, not its source line.
    xml.write_bytes(_without_digest(xml.read_bytes()))
    with pytest.raises(ValueError, match="not an OpenVINO IR model: Incorrect weights") as caught:
        runtimes.load_exported(str(xml))
    assert "src/" not in str(caught.value)
    with pytest.raises(UserInputError, match="OpenVINO model file not found"):
        openvino_export.read_openvino_config(str(tmp_path / "missing.xml"))


def _without_digest(xml_text: bytes) -> bytes:
    lines = xml_text.splitlines(keepends=True)
    kept = [line for line in lines if openvino_export.WEIGHTS_DIGEST.encode() not in line]
    assert len(kept) == len(lines) - 1
    return b"".join(kept)


def test_an_openvino_bin_of_another_export_of_the_same_model_is_refused(tmp_path):
    """The two files are renamed one after the other: a kill between left a new .bin beside
    the old .xml, which ran with the other weights (same shapes) and no error."""
    first, second = str(tmp_path / "a.xml"), str(tmp_path / "b.xml")
    export_formats.export_model(tiny_model(), first, "openvino")
    export_formats.export_model(tiny_model(), second, "openvino")  # other random weights
    images = random_images(2, 32)
    before = runtimes.load_exported(first)[0](images)
    shutil.copyfile(tmp_path / "b.bin", tmp_path / "a.bin")
    with pytest.raises(UserInputError, match="a.bin is not the weights file exported with") as e:
        runtimes.load_exported(first)
    assert "\n" not in str(e.value)
    # Without the digest the runtime takes the other export's weights as they come.
    (tmp_path / "a.xml").write_bytes(_without_digest((tmp_path / "a.xml").read_bytes()))
    assert not np.allclose(runtimes.load_exported(first)[0](images), before, atol=1e-3)
    assert not [name for name in os.listdir(tmp_path) if name.startswith((".", "tmp"))]


def test_export_cli_writes_litert_int8_and_evaluate_reads_it(models, crops, tmp_path):
    keras_path = str(tmp_path / "digits.keras")
    saving.save_model(models["distilled"], keras_path, class_names=[str(i) for i in range(10)])
    out = str(tmp_path / "digits_int8.tflite")
    process = run_cli(
        "export",
        f"--model_path={keras_path}",
        "--format=litert",
        "--quantize=int8",
        "--calibration_dataset=digits",
        "--calibration_images=32",
        f"--output={out}",
    )
    assert process.returncode == 0, process.stderr
    assert "quantize=int8" in process.stdout and os.path.isfile(out)
    results = str(tmp_path / "results.json")
    process = run_cli(
        "evaluate",
        f"--model_path={out}",
        "--dataset=digits",
        f"--reference_model={keras_path}",
        f"--output={results}",
    )
    assert process.returncode == 0, process.stderr
    assert "agreement_with_reference" in process.stdout
    with open(results) as handle:
        summary = json.load(handle)
    assert summary["num_examples"] == 360 and summary["top1"] > 0
    # The int8 file's answers against its fp32 model's on the same 360 crops.
    int8 = runtimes.load_exported(out)[0].run_uint8(crops)["logits"].argmax(-1)
    fp32 = _keras_outputs(models["distilled"], crops)["logits"].argmax(-1)
    # (the command's fp32 side runs on float crops, this one on uint8: a near-tie may differ)
    assert summary["agreement_with_reference"] == pytest.approx(np.mean(int8 == fp32), abs=1 / 360)
    assert summary["agreement_with_reference"] >= QUANTIZED_BARS["int8"][0]

    # An export as the reference: the same comparison the other way round.
    process = run_cli(
        "evaluate",
        f"--model_path={keras_path}",
        "--dataset=digits",
        f"--reference_model={out}",
        f"--output={results}",
    )
    assert process.returncode == 0, process.stderr
    with open(results) as handle:
        swapped = json.load(handle)
    assert swapped["agreement_with_reference"] == summary["agreement_with_reference"]
    assert swapped["reference_top1"] == summary["top1"]

    # A reference with other classes, or beside --benchmarks: one line each.
    five = str(tmp_path / "five.keras")
    saving.save_model(tiny_model(num_classes=5), five)
    process = run_cli(
        "evaluate", f"--model_path={out}", "--dataset=digits", f"--reference_model={five}"
    )
    assert_one_line_error(process, "same images and classes", "Received: (32, 5)")
    process = run_cli(
        "evaluate", f"--model_path={out}", "--benchmarks=v2", f"--reference_model={keras_path}"
    )
    assert_one_line_error(process, "--reference_model is for --dataset, not --benchmarks")


def test_export_cli_bad_combination_is_one_line(models, tmp_path):
    keras_path = str(tmp_path / "digits.keras")
    saving.save_model(models["plain"], keras_path)
    out = str(tmp_path / "m.onnx")
    process = run_cli(
        "export",
        f"--model_path={keras_path}",
        "--format=onnx",
        "--quantize=float16",
        f"--output={out}",
    )
    assert process.returncode == 2
    assert user_stderr(process) == [
        "error: quantize='float16' is for format litert; onnx takes "
        "('none', 'dynamic_int8', 'int8'). Received: format='onnx'"
    ]
    assert not os.path.exists(out)
    process = run_cli(
        "export",
        f"--model_path={keras_path}",
        "--format=onnx",
        "--calibration_dataset=digits",
        f"--output={out}",
    )
    assert_one_line_error(process, "--calibration_dataset is for --quantize=int8")
    assert not os.path.exists(out)


@pytest.mark.parametrize("export_format", ["onnx", "saved_model"])
def test_predict_cli_runs_an_export(models, exports, tmp_path, export_format):
    """A SavedModel, deit-export's default, was refused: "model_path is a directory"."""
    from PIL import Image

    model = models["distilled"]
    crop = eval_crops("digits", 1, 32, model.preprocessing, split="eval")[0]
    image = str(tmp_path / "digit.png")
    Image.fromarray(crop).save(image)
    expected = predict_images(model, [crop], NAMES, top_k=1)[0][0]
    exported = exports["distilled", export_format]
    process = run_cli("predict", f"--model_path={exported}", "--top_k=1", "--json", image)
    assert process.returncode == 0, process.stderr
    (record,) = json.loads(process.stdout)
    (top,) = record["predictions"]
    assert top["class_name"] == expected[0]
    assert top["probability"] == pytest.approx(expected[2], abs=1e-5)


def test_a_savedmodel_without_the_crops_signature_is_one_line(models, tmp_path):
    import keras

    from deit_keras.deploy.signatures import any_size_function

    path = tmp_path / "earlier_sm"
    archive = keras.export.ExportArchive()
    archive.track(models["plain"])
    archive.add_endpoint("serving_default", any_size_function(models["plain"]))
    archive.write_out(str(path), verbose=False)
    with pytest.raises(UserInputError, match="without deit_serving.json"):
        runtimes.load_exported(str(path))
    (path / "deit_serving.json").write_text(
        json.dumps(saved_model.read_saved_model_config(str(_sm(models, tmp_path))))
    )
    with pytest.raises(UserInputError, match="no 'serving_crops' signature .* export it again"):
        runtimes.load_exported(str(path))


def _sm(models, tmp_path):
    path = tmp_path / "sm"
    export_formats.export_model(models["plain"], str(path))
    return path


@pytest.mark.parametrize("export_format", ["onnx", "litert", "openvino"])
def test_a_mixed_precision_model_exports_its_float32_copy(models, crops, tmp_path, export_format):
    """tf2onnx wrote bfloat16 casts no runtime loads; LiteRT and OpenVINO failed on them."""
    if export_format == "openvino":
        pytest.importorskip("openvino")
    model = models["distilled"]
    mixed = precision.with_dtype_policy(model, "mixed_bfloat16")
    exported, _ = runtimes.load_exported(_export(mixed, tmp_path, export_format))
    got = exported.run_uint8(crops[:16])["logits"]
    np.testing.assert_allclose(got, _keras_outputs(model, crops[:16])["logits"], atol=FP32_ATOL)
    assert mixed.dtype_policy.name == "mixed_bfloat16"  # the user's model is left as it was


def test_models_the_converters_cannot_take_are_one_line_errors(tmp_path):
    gray = tiny_model(in_channels=1)
    with pytest.raises(UserInputError, match="in_channels=1"):
        _export(gray, tmp_path, "onnx")
    quantized = tiny_model()
    quantized.quantize("int8")
    for export_format in ("onnx", "litert", "openvino"):
        with pytest.raises(UserInputError, match="mode int8") as caught:
            _export(quantized, tmp_path, export_format)
        assert "\n" not in str(caught.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("export_format", ["onnx", "openvino"])
def test_weights_over_one_protobuf_are_refused_before_converting(
    models, tmp_path, monkeypatch, export_format
):
    """DeiT III-H's 2.5 GB failed late in the converter ("Invalid GraphDef")."""
    size = sum(int(np.prod(w.shape)) for w in models["plain"].weights) * 4
    monkeypatch.setattr(export_formats, "PROTOBUF_LIMIT", size)  # this model is "too big"
    out = tmp_path / f"m{export_options.SUFFIXES[export_format]}"
    with pytest.raises(UserInputError, match=r"GiB: the .* export is one ONNX protobuf"):
        export_formats.export_model(models["plain"], str(out), export_format)
    assert not out.exists()
    monkeypatch.setattr(export_formats, "PROTOBUF_LIMIT", size + 1)
    export_formats.export_model(models["plain"], str(out), export_format)


def test_openvino_export_makes_missing_folders(models, tmp_path):
    pytest.importorskip("openvino")
    path = tmp_path / "new" / "sub" / "m.xml"
    export_formats.export_model(models["plain"], str(path), "openvino")
    assert path.exists() and path.with_suffix(".bin").exists()
    assert sorted(os.listdir(path.parent)) == ["m.bin", "m.xml"]


def test_openvino_writer_failing_on_a_full_disk_is_a_write_error(models, tmp_path, monkeypatch):
    """On a full disk `ov.save_model` raises `RuntimeError: basic_ios::clear: iostream
    error` (a 2 MB tmpfs): it was an internal error, exit 70."""
    openvino = pytest.importorskip("openvino")
    from deit_keras.io.atomic import WriteError

    def full_disk(*args, **kwargs):
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(openvino, "save_model", full_disk)
    path = tmp_path / "m.xml"
    with pytest.raises(WriteError, match=r"Could not write .*m.xml: .*disk full"):
        export_formats.export_model(models["plain"], str(path), "openvino")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "metadata", [{"x": 1}, [1, 2], {"format": "saved_model", "model": "m", "image_size": "abc"}]
)
def test_damaged_serving_metadata_is_one_line_before_the_runtime_loads(tmp_path, metadata):
    # A SavedModel directory whose metadata is not deit_keras's: the file is the user's problem.
    (tmp_path / "saved_model.pb").write_bytes(b"not read: the metadata is checked first")
    (tmp_path / "deit_serving.json").write_text(json.dumps(metadata))
    with pytest.raises(UserInputError, match="damaged or foreign deit_serving metadata"):
        runtimes.ExportedModel(str(tmp_path))


@pytest.mark.parametrize(
    "removed", ["variables", "variables/variables.index", "data shard", "one shard of two"]
)
def test_a_saved_model_without_its_weights_is_one_line_naming_them(exports, tmp_path, removed):
    """`saved_model.pb` copied without `variables/`: TensorFlow's error said to set
    `experimental_io_device`."""
    copy = tmp_path / "copy_sm"
    shutil.copytree(exports["distilled", "saved_model"], copy)
    if removed == "one shard of two":  # the first shard of two, the second not copied
        (shard,) = (copy / "variables").glob("variables.data-*")
        shard.rename(copy / "variables" / "variables.data-00000-of-00002")
    elif removed == "data shard":
        for shard in (copy / "variables").glob("variables.data-*"):
            shard.unlink()
    elif removed == "variables":
        shutil.rmtree(copy / removed)
    else:
        (copy / removed).unlink()
    with pytest.raises(UserInputError, match="SavedModel without its weights.*whole directory"):
        runtimes.ExportedModel(str(copy))


def test_a_saved_model_whose_weights_are_cut_short_is_one_line(exports, tmp_path):
    """A truncated `variables.data-*` (a copy that stopped) was an internal error:
    `IndexError: Read less bytes than requested`."""
    copy = tmp_path / "cut_sm"
    shutil.copytree(exports["distilled", "saved_model"], copy)
    (shard,) = (copy / "variables").glob("variables.data-*")
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(UserInputError, match="weights .* are damaged or cut short.*again"):
        runtimes.ExportedModel(str(copy))


def test_calibration_on_a_split_smaller_than_asked_warns(caplog):
    """`--calibration_images` above the split's size calibrated on fewer images silently."""
    import logging

    from deit_keras.data.preprocessing import DEFAULT_PREPROCESSING

    caplog.set_level(logging.WARNING)
    crops = eval_crops("digits", 400, 16, DEFAULT_PREPROCESSING, split="eval")
    assert crops.shape == (360, 16, 16, 3) and crops.dtype == np.uint8
    (warning,) = [r.getMessage() for r in caplog.records if "Calibrating" in r.getMessage()]
    assert "360 images of digits's eval split, fewer than the 400" in warning
    caplog.clear()
    assert len(eval_crops("digits", 360, 16, DEFAULT_PREPROCESSING, split="eval")) == 360
    assert not [r for r in caplog.records if "Calibrating" in r.getMessage()]
