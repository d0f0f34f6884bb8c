"""Top-1 and agreement with fp32 of every export of a trained model, on a dataset's eval split.

Each export of `EXPORTS` (LiteRT fp32 / float16 / dynamic_int8 / int8, ONNX plain / fused /
dynamic_int8 / int8, OpenVINO fp32 / bf16 / int8) is made from the `.keras` model by
`deit_keras.deploy.export_formats.export_model`, int8 calibrated on the first
`--calibration_images` eval crops of the dataset's train split (what
`deit-export --calibration_dataset` does), run by its runtime on every eval image and compared
with the Keras model on the same images: top-1 against the labels, top-1 agreement with the
fp32 Keras model, how near a tie the fp32 model was on the images whose top-1 changed (the
largest top-2 probability margin among them), the largest |softmax difference|, the file
size. Exports whose runtime is not installed are listed as skipped.

    python benchmarks/export_agreement.py --model saved_models/deit_digits.keras \\
        [--dataset digits | folder:PATH | a tfds name] [--exports all | litert_int8,onnx_int8,...]
        [--calibration_images 200] [--max_images N] [--json PATH]

Prints a markdown table; `--json` writes the rows (atomically). `deploy_latency.py
--digits_model` runs the same comparison on the digits eval split.
"""

import argparse
import contextlib
import datetime
import json
import os
import sys
import tempfile
from importlib import metadata

import numpy as np

from deit_keras.errors import UserError, UserInputError
from deit_keras.inference import host  # no TensorFlow: deploy_latency's torch workers import this
from deit_keras.io import atomic, paths

# side -> (format, quantize, optimize): every export compared (and timed by deploy_latency.py).
QUANTIZE = ("none", "float16", "dynamic_int8", "int8")
EXPORTS = {
    **{f"litert_{q}": ("litert", q, False) for q in QUANTIZE},
    "onnx": ("onnx", "none", False),
    "onnx_fused": ("onnx", "none", True),
    "onnx_dynamic_int8": ("onnx", "dynamic_int8", True),
    "onnx_int8": ("onnx", "int8", True),
    **{f"openvino_{q}": ("openvino", q, False) for q in ("none", "bf16", "int8")},
}
BATCH = 500


def _missing_module(export_format):
    """The first module `export_format`'s runtime needs that is not installed, or None."""
    from deit_keras.inference import bench_runtimes

    return bench_runtimes.RUNTIMES[export_format].missing_module()


def _eval_images(dataset, model, max_images):
    """Normalised eval images and integer labels of `dataset`, at most `max_images`."""
    from deit_keras.data import pipeline

    images, labels = [], []
    for x, y in pipeline.make_dataset(
        dataset,
        "eval",
        image_size=model.image_size,
        batch_size=BATCH,
        training=False,
        preprocessing=model.preprocessing,
    ):
        images.append(np.asarray(x))
        y = np.asarray(y)
        labels.append(y.argmax(-1) if y.ndim == 2 else y)
        if max_images and sum(map(len, images)) >= max_images:
            break
    if not images:
        raise UserInputError(f"Dataset {dataset!r} has no eval images to compare on.")
    return np.concatenate(images)[:max_images], np.concatenate(labels)[:max_images]


def _probabilities(model, images):
    """Softmax of the averaged heads (`deit-evaluate`'s forward pass), in batches of `BATCH`."""
    from deit_keras.inference.evaluate import outputs_function

    outputs = outputs_function(model)
    chunks = [np.asarray(outputs(images[i : i + BATCH])[""]) for i in range(0, len(images), BATCH)]
    logits = np.concatenate(chunks).astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)


def _top2_margin(probabilities):
    top2 = np.sort(probabilities, axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def _row(probabilities, labels, reference, path=None):
    predictions = probabilities.argmax(-1)
    changed = predictions != reference.argmax(-1)
    row = {
        "top1": float(np.mean(predictions == labels)),
        "agreement": float(np.mean(~changed)),
        "disagreements": int(np.sum(changed)),
        # How close to a tie the fp32 model was on the images whose prediction changed.
        "max_fp32_margin_changed": float(_top2_margin(reference)[changed].max(initial=0.0)),
        "max_abs_probability_diff": float(np.abs(probabilities - reference).max()),
    }
    if path:
        row["file_kb"] = file_bytes(path) / 1024
    return row


def file_bytes(path):
    """An export's size on disk; OpenVINO's weights are the .bin beside the .xml."""
    weights = path[: -len(".xml")] + ".bin" if path.endswith(".xml") else None
    return os.path.getsize(path) + (os.path.getsize(weights) if weights else 0)


def agreement_rows(
    model_path, dataset, workdir, exports=tuple(EXPORTS), calibration_images=200, max_images=None
):
    """`(rows, skipped, num_images)`: per export (and `keras`) top-1, agreement, file size.

    Args:
        model_path: str. A `.keras` DeiT.
        dataset: str. `"digits"`, `"folder:PATH"` or a prepared tfds name.
        workdir: str. Where the exports are written.
        exports: names of `EXPORTS` to compare.
        calibration_images: int. Train-split eval crops that calibrate int8.
        max_images: int or None. Compare on the first this many eval images.
    """
    from deit_keras.deploy import export_formats, export_options, runtimes, saving
    from deit_keras.deploy.calibration import eval_crops

    model, _ = saving.load_model(model_path, compile=False)
    images, labels = _eval_images(dataset, model, max_images)
    reference = _probabilities(model, images)
    rows = {"keras": _row(reference, labels, reference)}
    skipped = {}
    calibration = None
    for side in exports:
        export_format, quantize, optimize = EXPORTS[side]
        missing = _missing_module(export_format)
        if missing:
            skipped[side] = f"{missing} is not installed"
            continue
        if quantize == "int8" and calibration is None:
            calibration = eval_crops(
                dataset, calibration_images, model.image_size, model.preprocessing
            )
        path = os.path.join(workdir, f"{side}{export_options.SUFFIXES[export_format]}")
        export_formats.export_model(
            model,
            path,
            export_format,
            quantize=quantize,
            optimize=optimize,
            calibration_images=calibration if quantize == "int8" else None,
        )
        exported, _ = runtimes.load_exported(path)
        rows[side] = _row(_probabilities(exported, images), labels, reference, path)
    return rows, skipped, int(len(images))


def markdown(rows, num_images):
    lines = [
        f"| export | top-1 | agreement with fp32 ({num_images} images) | disagreements "
        "| largest fp32 top-2 margin among them | max abs prob diff | file KB |",
        "|---|---|---|---|---|---|---|",
    ]
    for side, row in rows.items():
        size = f"{row['file_kb']:.0f}" if "file_kb" in row else ""
        lines.append(
            f"| {side} | {row['top1']:.4f} | {row['agreement']:.4f} | {row['disagreements']} "
            f"| {row['max_fp32_margin_changed']:.3f} | {row['max_abs_probability_diff']:.1e} "
            f"| {size} |"
        )
    return "\n".join(lines)


def _parse_exports(text):
    if text == "all":
        return tuple(EXPORTS)
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in EXPORTS]
    if unknown or not names:
        raise SystemExit(
            f"--exports takes 'all' or names from {', '.join(EXPORTS)}. Received: {text!r}"
        )
    return names


def _versions():
    """Versions of the packages behind the exports (NNCF's preset: `deploy.openvino_export`)."""
    found = {}
    for package in ("tensorflow", "keras", "ai-edge-litert", "onnxruntime", "openvino", "nncf"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a trained .keras DeiT")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--exports", default="all")
    parser.add_argument("--calibration_images", type=int, default=200)
    parser.add_argument("--max_images", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    exports = _parse_exports(args.exports)
    if not os.path.isfile(args.model):
        raise SystemExit(f"--model: no file at {args.model!r} (a trained .keras DeiT).")
    for name in ("calibration_images", "max_images"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise SystemExit(f"--{name} must be positive. Received: {value}")
    problem = paths.output_file_problem("--json", args.json)
    if problem:  # before the exports, not after
        raise SystemExit(problem)
    with tempfile.TemporaryDirectory() as workdir:
        try:
            rows, skipped, num_images = agreement_rows(
                args.model, args.dataset, workdir, exports, args.calibration_images, args.max_images
            )
        except UserError as error:  # a dataset or model file the library refuses
            raise SystemExit(f"export_agreement: {error}") from None
    result = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "cpu": host.cpu_info(),
        "model": args.model,
        "dataset": args.dataset,
        "num_images": num_images,
        "calibration_images": args.calibration_images,
        "versions": _versions(),
        "rows": rows,
        "skipped": skipped,
    }
    if args.json:
        atomic.write_text_atomic(args.json, json.dumps(result, indent=1) + "\n")
    print(markdown(rows, num_images))
    for side, reason in skipped.items():
        print(f"skipped {side}: {reason}")


if __name__ == "__main__":
    main()
