"""OpenVINO IR export of a DeiT (`.xml` + `.bin`), fp32, bf16 or NNCF int8.

The graph is the ONNX export's (`deploy.onnx_export`, fusable form, standard
ops) read by `openvino.convert_model`, so it has the same fixed-size contract
(uint8 `[B, S, S, 3]` crops in, dynamic batch; `probabilities`, `logits`,
`cls_logits`, `dist_logits` out). `deit_serving.json` is stored in the IR's
runtime info under "deit_serving" (`read_openvino_config`).

The two files are replaced one after the other, so a kill between the renames
could leave a new `.bin` beside an old `.xml` (a retrained model of the same
size would even run, with the wrong weights). The `.xml` records the SHA-256 of
its `.bin` (runtime info "deit_weights_sha256"); reading checks it.

Precision (`quantize=`):
- "none": float32 weights, and the runtime is told to compute in float32
  (`INFERENCE_PRECISION_HINT`; on CPUs with bf16 OpenVINO otherwise picks
  bf16 by itself, 1e-2 off).
- "bf16": the same file, run with bf16 inference precision where the CPU has
  it (AVX512_BF16, AMX); float32 elsewhere.
- "int8": NNCF post-training quantization (`model_type=TRANSFORMER`,
  `preset=PERFORMANCE`: symmetric weights and activations) with activation
  ranges calibrated on `calibration_images`.
"""

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile

from deit_keras.deploy import export_options, onnx_export
from deit_keras.deploy.export_options import openvino_weights_path
from deit_keras.deploy.signatures import METADATA_NAME, serving_config
from deit_keras.errors import UserInputError
from deit_keras.io import atomic, leftovers

QUANTIZATIONS = export_options.QUANTIZATIONS["openvino"]
PRECISION_HINTS = {"none": "f32", "bf16": "bf16", "int8": "f32"}
WEIGHTS_DIGEST = "deit_weights_sha256"
# How the IR writes a runtime-info string: <deit_weights_sha256 value="..." />
_DIGEST_IN_XML = re.compile(rb'<deit_weights_sha256 value="([0-9a-f]{64})"')


def check_quantize(quantize: str, calibration_images=None, *, need_images=True) -> None:
    if quantize not in QUANTIZATIONS:
        raise UserInputError(
            f"OpenVINO quantize must be one of {QUANTIZATIONS}. Received: quantize={quantize!r}"
        )
    if need_images and quantize == "int8" and calibration_images is None:
        raise UserInputError(
            "quantize='int8' calibrates activation ranges on images: pass calibration_images "
            "(the export command's --calibration_dataset)."
        )


def _nncf_int8(ov_model, images):
    import nncf

    dataset = nncf.Dataset([images[i : i + 1] for i in range(len(images))])
    # NNCF draws progress bars on stdout; the library prints nothing.
    with contextlib.redirect_stdout(io.StringIO()):
        return nncf.quantize(
            ov_model,
            dataset,
            model_type=nncf.ModelType.TRANSFORMER,
            # PERFORMANCE agreed with fp32 more often than MIXED (asymmetric activations) on
            # every student measured (CIFAR-10: 98.4% vs 98.1% of 10,000 images; the tests'
            # digits: 98.6% vs 98.1% on Intel, 99.4% vs 98.6% on Zen 4), at the same speed
            # (benchmarks/README, 2026-12-05).
            preset=nncf.QuantizationPreset.PERFORMANCE,
            subset_size=len(images),
        )


def _convert(model, quantize, calibration_images):
    import openvino as ov

    with tempfile.TemporaryDirectory() as directory:
        onnx_path = os.path.join(directory, "model.onnx")
        onnx_export.export_onnx(model, onnx_path)
        ov_model = ov.convert_model(onnx_path)
    if quantize == "int8":
        ov_model = _nncf_int8(ov_model, calibration_images)
    return ov_model


def _save(ov_model, path: str) -> None:
    """`path` (.xml) and its .bin, each replaced by rename once both are written; the .xml
    records the .bin's digest (module docstring)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    prefix = atomic.temporary_prefix(path)  # a kill leaves a folder named after the output
    leftovers.remove_stale(directory, prefix)  # by its owner, removed by the next export
    with tempfile.TemporaryDirectory(
        prefix=f"{prefix}{leftovers.owner()}-", dir=directory
    ) as staging:
        staged = os.path.join(staging, "model.xml")
        _save_model(ov_model, staged, path)
        digest = _sha256(openvino_weights_path(staged))
        ov_model.set_rt_info(digest, [WEIGHTS_DIGEST])
        _save_model(ov_model, staged, path)  # runtime info lives in the .xml alone
        if _sha256(openvino_weights_path(staged)) != digest:
            raise RuntimeError("OpenVINO wrote other weights the second time")
        atomic.write_bytes_atomic(openvino_weights_path(path), _read(openvino_weights_path(staged)))
        atomic.write_bytes_atomic(path, _read(staged))


def _save_model(ov_model, staged: str, path: str) -> None:
    import openvino as ov

    try:
        ov.save_model(ov_model, staged, compress_to_fp16=False)
    except RuntimeError as error:
        if "iostream error" not in str(error):  # C++ stream failure: the disk's, not ours
            raise
        raise atomic.WriteError(
            f"Could not write {path}: OpenVINO's writer failed ({error}): is the disk full "
            "or read-only? Free space or give write access there, or write elsewhere; the "
            "files that were there before (if any) are unchanged."
        ) from error


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_weights_digest(path: str, xml_text: bytes) -> None:
    """One line when the .bin beside `path` is not the one exported with it."""
    recorded = _DIGEST_IN_XML.search(xml_text)
    weights = openvino_weights_path(path)
    if recorded is None or not os.path.isfile(weights):
        return  # an IR of an earlier version, or the .bin missing (`_unreadable` says so)
    if _sha256(weights) != recorded.group(1).decode():
        raise UserInputError(
            f"{weights} is not the weights file exported with {path} (its SHA-256 differs: "
            "an export stopped between the two files, or a .bin of another export): export "
            "again, or copy the .xml and its .bin together."
        )


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def export_openvino(
    model,
    path: str,
    quantize: str = "none",
    calibration_images=None,
    crop_pct: float | None = None,
    class_names: list[str] | None = None,
) -> dict:
    """Writes `model` as OpenVINO IR (`path` .xml and its .bin) and returns its serving config.

    Args:
        model: a `DeiT` with a classification head.
        path: str. Output `.xml` file; the weights go to the `.bin` beside it.
        quantize: str. One of `QUANTIZATIONS` (module docstring).
        calibration_images: uint8 `[N, S, S, 3]` eval crops; needed for "int8".
        crop_pct: float or None. Recorded in the config. Defaults to the model's.
        class_names: list of str or None. Recorded in the config.

    Returns:
        The `deit_serving` config stored in the file.
    """
    check_quantize(quantize, calibration_images)
    config = serving_config(
        model,
        "openvino",
        crop_pct=crop_pct,
        class_names=class_names,
        quantize=quantize,
        inference_precision=PRECISION_HINTS[quantize],
    )
    ov_model = _convert(model, quantize, calibration_images)
    ov_model.set_rt_info(json.dumps(config), [METADATA_NAME])
    _save(ov_model, path)
    return config


def read_openvino_config(path: str) -> dict:
    """The `deit_serving` runtime info of an `.xml` written by `export_openvino`.

    Raises:
        ValueError: not an OpenVINO IR, or one without the metadata.
    """
    import openvino as ov

    if not os.path.isfile(path):
        raise UserInputError(f"OpenVINO model file not found: {path}")
    with open(path, "rb") as handle:
        xml_text = handle.read()
    # Without <net> OpenVINO tries each frontend in turn, and TensorFlow's logs its parse.
    if b"<net " not in xml_text[:4096]:
        raise UserInputError(
            f"{path} is not an OpenVINO IR model (no <net> element at its start): export one "
            "with `python -m deit_keras.export --format=openvino`."
        )
    _check_weights_digest(path, xml_text)
    try:
        ov_model = ov.Core().read_model(path)
    except RuntimeError as error:
        raise UserInputError(_unreadable(path, error)) from error
    if not ov_model.has_rt_info([METADATA_NAME]):
        raise UserInputError(
            f"{path} has no '{METADATA_NAME}' metadata: export it with "
            "`python -m deit_keras.export --format=openvino`."
        )
    return json.loads(ov_model.get_rt_info([METADATA_NAME]).astype(str))


def _unreadable(path: str, error: RuntimeError) -> str:
    """Why OpenVINO cannot read `path`: its .bin is missing, or the runtime's own reason."""
    from openvino.frontend import FrontEndManager

    weights = openvino_weights_path(path)
    frontend = FrontEndManager().load_by_model(path)
    if frontend is not None and frontend.get_name() == "ir" and not os.path.isfile(weights):
        return (
            f"{path} is an OpenVINO IR whose weights file {weights} is missing: keep the .bin "
            "beside the .xml (copy both)."
        )
    # The runtime's message opens with source locations ("Exception from src/...:84:",
    # "Check '...' failed at ..."); the reason is on the lines after them.
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return f"{path} is not an OpenVINO IR model: {' '.join(reasons or lines)}"
