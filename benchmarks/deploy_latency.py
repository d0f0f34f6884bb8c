"""CPU latency and throughput of the export formats against PyTorch eager, one run, same weights.

Sides (each in its own worker process, timed in turns, A/B/C/...):
- `torch`: the reference, Hugging Face `DeiTForImageClassificationWithTeacher`
  (random weights, fp32, eager, `torch.inference_mode()`, all cores).
- `keras_xla`: `deit_keras.inference.predict_function(model)` (XLA).
- `litert_<quantize>`: `deit_keras.export --format=litert --quantize=...` run by
  `ai_edge_litert` with `num_threads=os.cpu_count()`.
- `onnx`: `deit_keras.export --format=onnx` (the fusable standard-op graph) run
  by onnxruntime (CPU provider); `onnx_fused`: `--optimize` (ORT's Attention,
  SkipLayerNorm, BiasGelu kernels); `onnx_<dynamic_int8|int8>`: `--quantize=...`.
- `openvino_<none|bf16|int8>`: `--format=openvino --quantize=...` run by
  OpenVINO's CPU plugin (int8: NNCF).

The Keras model is the reference's weights read by
`deit_keras.deploy.checkpoints.load_checkpoint`; the exports are made from
it. int8 is calibrated on random images here (speed only); accuracy of each
quantized variant is measured separately on a digits student
(`--digits_model`, e.g. the `make demo` output): top-1 on the digits eval split
and top-1 agreement with fp32, and the file sizes.

    python benchmarks/deploy_latency.py [--model deit_tiny_distilled_patch16_224]
        [--repeats 5] [--digits_model saved_models/deit_digits.keras] [--quick]

Writes `benchmarks/results/deploy_latency.json` and prints a markdown table.
"""

import torch_env  # noqa: F401, I001 (first: the torchvision stub, see torch_env.py)
import argparse
import datetime
import json
import os
import resource
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput  # noqa: E402  (a sibling script: machine facts, the HF reference)
from export_agreement import EXPORTS, agreement_rows, file_bytes  # noqa: E402  (a sibling)

from deit_keras.inference import timing  # noqa: E402  (throughput puts the repository first)

ROOT = throughput.ROOT
SIDES = ["torch", "keras_xla", *EXPORTS]


# === Workers ===


def _torch_step(args, batch, size):
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(os.cpu_count())
    model = throughput.hf_model(args.model)
    model.load_state_dict(load_file(os.path.join(args.workdir, "weights.safetensors")))
    model.eval()
    images = torch.from_numpy(_images(batch, size).astype("float32").transpose(0, 3, 1, 2))

    def step():
        with torch.inference_mode():
            return model(images).logits.numpy()

    return step


def _images(batch, size):
    return np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def _keras_step(args, batch, size):
    from deit_keras.data.preprocessing import normalize
    from deit_keras.deploy.checkpoints import load_checkpoint
    from deit_keras.inference.predict import predict_function

    model = load_checkpoint(os.path.join(args.workdir, "weights.safetensors"), args.model)
    predict = predict_function(model)
    images = normalize(_images(batch, size), model.preprocessing)  # on the graph's input side
    return lambda: predict(images).numpy()


def _exported_step(args, side, batch, size):
    from deit_keras.deploy.export_options import SUFFIXES
    from deit_keras.deploy.runtimes import ExportedModel

    suffix = SUFFIXES[EXPORTS[side][0]]
    exported = ExportedModel(os.path.join(args.workdir, side + suffix), num_threads=os.cpu_count())
    images = _images(batch, size)
    return lambda: exported.run_uint8(images)["logits"]


def worker(args):
    side, batch, size = args.worker.split(":")
    batch, size = int(batch), int(size)
    if side == "torch":
        step = _torch_step(args, batch, size)
    elif side == "keras_xla":
        step = _keras_step(args, batch, size)
    else:
        step = _exported_step(args, side, batch, size)
    timing.time_calls(step, args.warmup)
    throughput.reply(ready=True)
    for line in sys.stdin:
        command = line.split()
        if command[0] != "run":
            break
        throughput.reply(seconds=timing.time_calls(step, int(command[1])))
    throughput.reply(max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def prepare(args):
    """Keras side of the set-up: the exports of the reference's weights."""
    from deit_keras.deploy import export_formats, export_options
    from deit_keras.deploy.checkpoints import load_checkpoint
    from deit_keras.deploy.runtimes import ExportedModel
    from deit_keras.deploy.signatures import fixed_size_function

    model = load_checkpoint(os.path.join(args.workdir, "weights.safetensors"), args.model)
    size = model.image_size
    calibration = _images(16, size)
    paths = {}
    for side, (export_format, quantize, optimize) in EXPORTS.items():
        paths[side] = os.path.join(args.workdir, side + export_options.SUFFIXES[export_format])
        export_formats.export_model(
            model,
            paths[side],
            export_format,
            quantize=quantize,
            optimize=optimize,
            calibration_images=calibration,
        )
    # Same weights, same images: each export's logits against the Keras graph's.
    probe = np.random.default_rng(1).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    expected = np.asarray(fixed_size_function(model)(probe)["logits"])
    checks = {}
    for side, path in paths.items():
        logits = ExportedModel(path).run_uint8(probe)["logits"]
        checks[side] = {
            "finite": bool(np.isfinite(logits).all()),
            "max_abs_logit_diff": float(np.abs(logits - expected).max()),
            "max_abs_logit": float(np.abs(expected).max()),
            "file_mb": file_bytes(path) / 2**20,
        }
    throughput.reply(image_size=size, checks=checks)


def digits_accuracy(args):
    """Top-1, fp32 agreement and file size of each export of the digits student."""
    workdir = os.path.join(args.workdir, "digits")  # beside, not over, the timed exports
    os.makedirs(workdir, exist_ok=True)
    rows, _, num_images = agreement_rows(args.digits_model, "digits", workdir)
    throughput.reply(rows=rows, model=args.digits_model, num_images=num_images)


# === Driver ===


class Worker(throughput.WorkerProcess):
    def __init__(self, args, mode, spec=""):
        command = [sys.executable, os.path.abspath(__file__), f"--{mode}", spec or "1"]
        command += ["--workdir", args.workdir, "--model", args.model, "--warmup", str(args.warmup)]
        if args.digits_model:
            command += ["--digits_model", args.digits_model]
        super().__init__(command, spec, dict(os.environ, CUDA_VISIBLE_DEVICES=""))


def one_shot(args, mode):
    worker_process = Worker(args, mode)
    reply = worker_process.read()
    worker_process.process.wait()
    return reply


def timed(args, batch, size, iterations):
    """`{side: {"seconds": [every call], "max_rss_mb": x}}`, sides timed in turns."""
    workers = [Worker(args, "worker", f"{side}:{batch}:{size}") for side in SIDES]
    for w in workers:
        w.read()
    out = {side: {"seconds": []} for side in SIDES}
    for _ in range(args.repeats):
        for side, w in zip(SIDES, workers, strict=True):
            w.send(f"run {iterations}")
            out[side]["seconds"] += w.read()["seconds"]
    for side, w in zip(SIDES, workers, strict=True):
        out[side].update(w.close())
    return out


def summarise(batch1, batch32, batch):
    rows = {}
    ref1 = np.median(batch1["torch"]["seconds"])
    ref32 = np.median(batch32["torch"]["seconds"])
    for side in SIDES:
        one, many = batch1[side]["seconds"], np.asarray(batch32[side]["seconds"])
        latency = timing.summarize(one, 1)
        rows[side] = {
            "b1_median_ms": latency["median_ms"],
            "b1_p90_ms": latency["p90_ms"],
            "b1_latency_ratio": float(np.median(one) / ref1),
            f"b{batch}_images_per_s": batch / float(np.median(many)),
            f"b{batch}_throughput_ratio": float(ref32 / np.median(many)),
            "max_rss_mb": max(batch1[side]["max_rss_mb"], batch32[side]["max_rss_mb"]),
        }
    return rows


def markdown(result):
    batch = result["batch"]
    lines = [
        f"| side | b1 median ms | b1 p90 ms | b1 latency / torch | b{batch} img/s "
        f"| b{batch} throughput / torch | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for side, row in result["latency"].items():
        lines.append(
            f"| {side} | {row['b1_median_ms']:.1f} | {row['b1_p90_ms']:.1f} | "
            f"{row['b1_latency_ratio']:.2f}x | {row[f'b{batch}_images_per_s']:.1f} | "
            f"{row[f'b{batch}_throughput_ratio']:.2f}x | {row['max_rss_mb']:.0f} |"
        )
    lines += [
        "",
        "| export | finite | max abs logit diff vs Keras | file MB |",
        "|---|---|---|---|",
    ]
    for side, row in result["export_checks"].items():
        lines.append(
            f"| {side} | {row['finite']} | {row['max_abs_logit_diff']:.2e} | {row['file_mb']:.1f} |"
        )
    if result.get("digits"):
        lines += ["", "| digits student | top-1 | agreement with fp32 | file KB |"]
        lines.append("|---|---|---|---|")
        for side, row in result["digits"]["rows"].items():
            size = f"{row['file_kb']:.0f}" if "file_kb" in row else "-"
            lines.append(f"| {side} | {row['top1']:.4f} | {row['agreement']:.4f} | {size} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="deit_tiny_distilled_patch16_224")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=20, help="batch-1 calls per turn")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--digits_model", default=None)
    parser.add_argument("--quick", action="store_true", help="2 repeats, 5 calls: a smoke run")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--worker", default=None)
    parser.add_argument("--prepare", default=None)
    parser.add_argument("--save_weights", default=None)
    parser.add_argument("--digits", default=None)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.prepare:
        return prepare(args)
    if args.digits:
        return digits_accuracy(args)
    if args.save_weights:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return throughput.save_weights(
            args.model, os.path.join(args.workdir, "weights.safetensors")
        )
    if args.quick:
        args.repeats, args.iterations = 2, 5
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as workdir:
        args.workdir = workdir
        one_shot(args, "save_weights")
        prepared = one_shot(args, "prepare")
        size = prepared["image_size"]
        digits = one_shot(args, "digits") if args.digits_model else None
        batch1 = timed(args, 1, size, args.iterations)
        batchn = timed(args, args.batch, size, max(1, args.iterations // 10))
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": throughput.machine(),
        "load_average_start": load_at_start,
        "load_average": os.getloadavg(),
        "command": " ".join(sys.argv),
        "model": args.model,
        "batch": args.batch,
        "repeats": args.repeats,
        "latency": summarise(batch1, batchn, args.batch),
        "export_checks": prepared["checks"],
        "digits": digits,
    }
    name = "deploy_latency_quick.json" if args.quick else "deploy_latency.json"
    os.makedirs(throughput.RESULTS, exist_ok=True)
    with open(os.path.join(throughput.RESULTS, name), "w") as handle:
        json.dump(result, handle, indent=1)
    print(markdown(result))


if __name__ == "__main__":
    main()
