"""Throughput and batch-1 latency of a DeiT on this machine, in each runtime and export.

    python -m deit_keras.benchmark --model deit_tiny_distilled_patch16_224 \\
        [--batch_size 32] [--runtimes all|keras,xla,saved_model,onnx,onnx_int8,litert,...] \\
        [--reference torch] [--iterations N | --time_budget 3] [--json results.json]
    python -m deit_keras.benchmark --model model.keras --runtimes xla,onnx

A preset runs with fresh weights (speed does not depend on them; nothing is
downloaded). Prints a table and a "fastest here" line; --json writes every
figure, the CPU's model and features, threads and peak RSS.
"""

import json
import sys

from absl import flags

from deit_keras import cli
from deit_keras.cli import launch
from deit_keras.deploy import export_options
from deit_keras.inference.benchmark_names import ALL, DEPLOY_RUNTIMES, REFERENCES
from deit_keras.io import paths
from deit_keras.io.atomic import write_text_atomic
from deit_keras.schema import NON_NEGATIVE, POSITIVE

_MODEL = flags.DEFINE_string(
    "model", None, "A preset name (see deit_keras.list_models()) or a .keras file."
)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "A preset's input side; its own if unset.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", None, "A preset's classes; 1000 if unset.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per call of the throughput case.")
_RUNTIMES = flags.DEFINE_string(
    "runtimes",
    ALL,
    f"'{ALL}' (every installed one) or a comma-separated list of: {', '.join(DEPLOY_RUNTIMES)}.",
)
_REFERENCE = flags.DEFINE_enum(
    "reference",
    "none",
    list(REFERENCES),
    "Also time the PyTorch eager reference (transformers, same architecture) in the same "
    "turns and give every runtime's ratios against it; needs torch and transformers.",
)
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed calls per runtime and case.")
_ITERATIONS = flags.DEFINE_integer(
    "iterations", None, "Timed calls per runtime and case; instead of --time_budget."
)
_TIME_BUDGET = flags.DEFINE_float(
    "time_budget", 3.0, "Seconds of timed calls per runtime and case (without --iterations)."
)
_ROUNDS = flags.DEFINE_integer(
    "rounds", 3, "Turns the timed calls are split over, the runtimes taking turns."
)
_NUM_THREADS = flags.DEFINE_integer(
    "num_threads", None, "Threads of LiteRT, onnxruntime and torch; the usable CPUs if unset."
)
_JSON = flags.DEFINE_string("json", None, "Also write every figure here as JSON (atomically).")

cli.check_path("json", "output_file")
for _name in ("image_size", "num_classes", "batch_size", "iterations", "rounds", "num_threads"):
    cli.check_range(_name, POSITIVE)
cli.check_range("warmup", NON_NEGATIVE)
cli.check_range("time_budget", POSITIVE)


def format_table(result: dict) -> str:
    """One row per runtime, for people."""
    against = result["reference"]
    batch = result["settings"]["batch_size"]
    header = f"{'runtime':<20} {f'b{batch} img/s':>11} {'b1 median ms':>13} {'b1 p90 ms':>10}"
    if against:
        header += f" {'img/s x ' + against:>14} {'ms x ' + against:>11}"
    lines = [header]
    for name, row in result["runtimes"].items():
        line = (
            f"{name:<20} {row['throughput']['images_per_s']:>11.1f} "
            f"{row['latency']['median_ms']:>13.2f} {row['latency']['p90_ms']:>10.2f}"
        )
        if against:
            line += f" {row['throughput_ratio']:>14.2f} {row['latency_ratio']:>11.2f}"
        lines.append(line)
    for name, reason in {**result["skipped"], **result["failed"]}.items():
        lines.append(f"{name:<20} not timed: {reason}")
    lines.append(f"peak RSS {result['peak_rss_mb']:.0f} MB")
    lines.append(result["summary"])
    return "\n".join(lines)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _check_flags() -> None:
    if _ITERATIONS.value is not None and flags.FLAGS["time_budget"].present:
        raise cli.UsageError(
            "Give --iterations or --time_budget, not both. Received: "
            f"--iterations={_ITERATIONS.value}, --time_budget={_TIME_BUDGET.value}"
        )
    model_files = [_MODEL.value, export_options.classes_path(_MODEL.value)]
    if _JSON.value and any(paths.is_within(_JSON.value, path) for path in model_files):
        raise cli.UsageError(
            f"--json would replace the model file: write it elsewhere. Received: "
            f"--json={_JSON.value}, --model={_MODEL.value}"
        )


def main(argv: list[str]) -> None:
    cli.check_no_arguments(argv)
    _check_flags()
    launch.quiet_tensorflow_start(sys.argv[1:])  # once the flags are accepted
    from deit_keras.inference import benchmark

    runtimes, skipped = benchmark.select_runtimes(_RUNTIMES.value)
    benchmark.check_options(
        _BATCH_SIZE.value,
        _REFERENCE.value,
        _WARMUP.value,
        _ITERATIONS.value,
        _ROUNDS.value,
        _NUM_THREADS.value,
    )
    model = benchmark.benchmark_model(_MODEL.value, _IMAGE_SIZE.value, _NUM_CLASSES.value)
    result = benchmark.run_benchmark(
        model,
        runtimes,
        batch_size=_BATCH_SIZE.value,
        reference=_REFERENCE.value,
        warmup=_WARMUP.value,
        iterations=_ITERATIONS.value,
        time_budget_s=_TIME_BUDGET.value,
        rounds=_ROUNDS.value,
        num_threads=_NUM_THREADS.value,
        progress=_progress,
        skipped=skipped,
    )
    result["command"] = " ".join(["deit-benchmark", *sys.argv[1:]])
    if _JSON.value:
        write_text_atomic(_JSON.value, json.dumps(result, indent=1) + "\n")
    print(format_table(result))
    if _JSON.value:
        print(f"wrote {_JSON.value}")
    if not result["runtimes"]:
        raise cli.UsageError("No runtime could be timed (each one's reason is in the table).")


def run() -> None:
    flags.mark_flags_as_required(["model"])
    cli.run(main)


if __name__ == "__main__":
    run()
