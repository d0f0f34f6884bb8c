"""How fast a DeiT runs here: throughput and batch-1 latency in each runtime, one run.

The library of `deit_keras.benchmark` (timm's `benchmark.py` is the model).
For each runtime of `bench_runtimes.RUNTIMES` it builds what the runtime runs
(exports included), warms it up, then times it with the others in turns
(`timing.interleaved`): calls at `batch_size` for images/s and calls of one
image for the latency's median and p90. With a reference (`"torch"`) every
runtime also gets its ratios against it from the same turns. The result
records the machine (`host.cpu_info`: the CPU's model and vector features),
the threads, the process's peak RSS and a one-line "fastest here" summary.
"""

import datetime
import importlib.metadata
import os
import tempfile
import time

from absl import logging

from deit_keras import errors
from deit_keras.deploy.export_options import SUFFIXES
from deit_keras.deploy.saving import load_model
from deit_keras.errors import UserInputError
from deit_keras.inference import host, timing
from deit_keras.inference.bench_runtimes import RUNTIMES, Setup
from deit_keras.inference.benchmark_names import ALL, DEPLOY_RUNTIMES, REFERENCE, REFERENCES
from deit_keras.models.cait import CaiT
from deit_keras.models.variants import build_model, list_models

# The runtime that times what an exported file holds (the benchmark exports the .keras
# itself): the export format, whose runtime has its name.
_RUNTIME_OF_SUFFIX = {suffix: export_format for export_format, suffix in SUFFIXES.items()}
_VERSIONS = (
    "tensorflow",
    "keras",
    "onnxruntime",
    "tf2onnx",
    "ai-edge-litert",
    "torch",
    "transformers",
)


def select_runtimes(names: str) -> tuple[list[str], dict]:
    """`(runtimes, skipped)` of a comma-separated list, `"all"` for every installed one.

    Raises:
        UserInputError: an unknown name, or an empty list.
        MissingDependencyError: a runtime named that is not installed (its pip line).
    """
    given = [name.strip() for name in names.split(",") if name.strip()]
    if given == [ALL]:
        missing = {name: RUNTIMES[name].missing_module() for name in DEPLOY_RUNTIMES}
        skipped = {name: f"{module} not installed" for name, module in missing.items() if module}
        return [name for name in DEPLOY_RUNTIMES if name not in skipped], skipped
    unknown = [name for name in given if name not in DEPLOY_RUNTIMES]
    if unknown or not given:
        raise UserInputError(
            f"runtimes must be '{ALL}' or a comma-separated list of {', '.join(DEPLOY_RUNTIMES)}"
            f" (the reference is --reference={REFERENCE}). Received: runtimes={names!r}"
        )
    for name in given:
        check_installed(name)
    return list(dict.fromkeys(given)), {}


def check_installed(name: str) -> None:
    """Raises `MissingDependencyError` (with its pip line) when runtime `name` cannot import."""
    runtime = RUNTIMES[name]
    errors.check_installed(runtime.modules, f"The {name} runtime", runtime.install)


def check_options(
    batch_size: int, reference: str, warmup: int, iterations, rounds: int, num_threads=None
) -> None:
    """One-line `UserInputError`s for settings that cannot be benchmarked."""
    if batch_size <= 0:
        raise UserInputError(f"batch_size must be positive. Received: batch_size={batch_size}")
    if reference not in REFERENCES:
        raise UserInputError(f"reference must be one of {REFERENCES}. Received: {reference!r}")
    if reference != "none":
        check_installed(reference)
    if warmup < 0 or rounds <= 0 or (iterations is not None and iterations <= 0):
        raise UserInputError(
            "warmup must be >= 0, rounds and iterations positive. Received: "
            f"warmup={warmup}, rounds={rounds}, iterations={iterations}"
        )
    _check_num_threads(num_threads)


def _check_num_threads(num_threads) -> None:
    # More threads than CPUs only time the oversubscription; a large count
    # also has each runtime start that many threads (100,000 took 17 GB here).
    usable = host.usable_cpus()
    if num_threads is not None and not 0 < num_threads <= usable:
        raise UserInputError(
            f"num_threads must be between 1 and {usable}, the CPUs this process may use. "
            f"Received: num_threads={num_threads}"
        )


def check_reference_fits(model, reference: str) -> None:
    """The PyTorch reference is transformers' DeiT (or ViT): nothing like-for-like for CaiT."""
    if reference != "none" and isinstance(model, CaiT):
        raise UserInputError(
            f"The {reference} reference is transformers' DeiT/ViT, not CaiT (class attention, "
            "talking heads): its ratios would compare other architectures. Time CaiT without "
            f"--reference. Received: reference={reference}, model={type(model).__name__}"
        )


def benchmark_model(model: str, image_size: int | None = None, num_classes: int | None = None):
    """The `DeiT` to time: a preset name (fresh weights) or a `.keras` file.

    Args:
        model: str. A name of `list_models()`, or a path ending in `.keras`.
        image_size: int or None. A preset's input side; defaults to its own.
        num_classes: int or None. A preset's classes; defaults to 1000.

    Raises:
        UserInputError: an unknown name, a file other than `.keras` (e.g. an
            export), a model without a head, or
            `image_size` / `num_classes` given with a `.keras` file (it has its own).
    """
    _check_not_another_file(model)
    if model.lower().endswith(".keras"):
        if image_size is not None or num_classes is not None:
            raise UserInputError(
                f"{model} has its own image size and classes; image_size and num_classes are "
                f"for a preset name. Received: image_size={image_size}, num_classes={num_classes}"
            )
        deit, _ = load_model(model, compile=False)
    else:
        deit = build_model(
            model, num_classes=1000 if num_classes is None else num_classes, image_size=image_size
        )
    if not deit.num_classes:
        raise UserInputError(
            f"A benchmark needs a model with a head. Received: {model} with num_classes=0"
        )
    return deit


def _check_not_another_file(model: str) -> None:
    """A path that is not a .keras file (e.g. an export) is not looked up as a preset name."""
    suffix = os.path.splitext(model)[1].lower()
    if suffix == ".keras" or model in list_models():  # a folder may share a preset's name
        return
    if not (os.path.exists(model) or suffix in _RUNTIME_OF_SUFFIX):
        return
    runtime = _RUNTIME_OF_SUFFIX.get(suffix)
    hint = (
        f": to time it as {runtime}, pass the .keras it was exported from with runtimes={runtime} "
        "(the benchmark exports it itself)"
        if runtime
        else ""
    )
    raise UserInputError(
        f"model takes a preset name (deit_keras.list_models()) or a .keras file, not another "
        f"file{hint}. Received: model={model}"
    )


def _versions() -> dict:
    found = {}
    for distribution in _VERSIONS:
        try:
            found[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _machine(num_threads: int) -> dict:
    import tensorflow as tf

    info = host.cpu_info()
    info["num_threads"] = num_threads
    info["tensorflow_threads"] = {  # 0: TensorFlow's default, every usable core
        "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
    }
    return info


def _prepared(names, setup, batch_size, warmup, progress):
    """Builds and warms up each runtime: `(throughput steps, latency steps, rows, failed)`."""
    many, one, rows, failed = {}, {}, {}, {}
    for name in names:
        progress(f"preparing {name}: {RUNTIMES[name].description}")
        start = time.perf_counter()
        try:
            step_for = RUNTIMES[name].build(setup)
            steps = {"throughput": step_for(batch_size), "latency": step_for(1)}
            last = {case: timing.warm_up(step, warmup) for case, step in steps.items()}
        except Exception as error:  # one runtime failing leaves the others' figures
            if name == REFERENCE:
                raise
            failed[name] = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
            logging.warning("%s failed: %s", name, failed[name])
            continue
        many[name], one[name] = steps["throughput"], steps["latency"]
        rows[name] = {
            "description": RUNTIMES[name].description,
            "prepare_s": time.perf_counter() - start,
            "rss_mb_after_warmup": host.current_rss_mb(),
            "_last": last,
        }
    return many, one, rows, failed


def _timed(many, one, rows, iterations, budget_s, rounds) -> dict:
    """Per-call seconds of every runtime, both cases, in turns."""
    return {
        "throughput": timing.interleaved(
            many, _calls(rows, "throughput", iterations, budget_s), rounds
        ),
        "latency": timing.interleaved(one, _calls(rows, "latency", iterations, budget_s), rounds),
    }


def _calls(rows, case, iterations, budget_s):
    if iterations is not None:
        return {name: iterations for name in rows}
    return {
        name: timing.calls_for_budget(row["_last"][case], budget_s) for name, row in rows.items()
    }


def run_benchmark(
    model,
    runtimes: list[str],
    batch_size: int = 32,
    reference: str = "none",
    warmup: int = 3,
    iterations: int | None = None,
    time_budget_s: float = 3.0,
    rounds: int = 3,
    num_threads: int | None = None,
    progress=None,
    skipped: dict | None = None,
) -> dict:
    """Times `model` in each of `runtimes` (and the reference); returns the result dict.

    Args:
        model: a `DeiT` with a head (`benchmark_model`).
        runtimes: list of str. Names of `bench_runtimes.RUNTIMES` (`select_runtimes`).
        batch_size: int. Images per call of the throughput case.
        reference: str. `"none"` or `"torch"` (timed in the same turns; ratios).
        warmup: int. Untimed calls per runtime and case (the first compiles).
        iterations: int or None. Timed calls per runtime and case; None
            fits them into `time_budget_s`.
        time_budget_s: float. Seconds of timed calls per runtime and case.
        rounds: int. Turns the calls are split over (`timing.interleaved`); at most
            `iterations` (the settings record the turns taken).
        num_threads: int or None. Threads of LiteRT, onnxruntime and torch;
            defaults to the usable CPUs.
        progress: callable(str) or None. Told what is being prepared and timed.
        skipped: dict or None. Runtimes left out and why (`select_runtimes`), recorded.

    Returns:
        A JSON-ready dict; see `docs/deployment.md#deit-benchmark` for its fields.
    """
    progress = progress or (lambda line: logging.info("%s", line))
    check_options(batch_size, reference, warmup, iterations, rounds, num_threads)
    check_reference_fits(model, reference)
    if iterations is not None:
        rounds = min(rounds, iterations)  # every turn times at least one call
    num_threads = num_threads or host.usable_cpus()
    names = list(runtimes) + ([reference] if reference != "none" else [])
    load_before = host.load_average()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="deit-benchmark-") as workdir:
        setup = Setup(model, workdir, num_threads, quiet_onnx=len(names) > 1)
        try:
            many, one, rows, failed = _prepared(names, setup, batch_size, warmup, progress)
            progress(f"timing {', '.join(rows)} in {rounds} turns: batch {batch_size}, then 1")
            seconds = _timed(many, one, rows, iterations, time_budget_s, rounds)
        finally:
            process_rss = {name: close() for name, close in setup.closers.items()}
    for name, row in rows.items():
        del row["_last"]
        row["throughput"] = timing.summarize(seconds["throughput"][name], batch_size)
        row["latency"] = timing.summarize(seconds["latency"][name], 1)
        if name in process_rss:  # its own process: its memory, not ours
            row["rss_mb_after_warmup"] = None
            row["process_peak_rss_mb"] = process_rss[name]
    result = {
        "date": started,
        "versions": _versions(),
        "machine": dict(
            _machine(num_threads),
            load_average_before=load_before,
            load_average_after=host.load_average(),
        ),
        "model": _model_fields(model),
        "settings": dict(
            batch_size=batch_size,
            warmup=warmup,
            iterations=iterations,
            time_budget_s=None if iterations else time_budget_s,
            rounds=rounds,
        ),
        "reference": reference if reference in rows else None,
        "runtimes": rows,
        "failed": failed,
        "skipped": dict(skipped or {}),
        "peak_rss_mb": host.peak_rss_mb(),
    }
    _add_ratios(result)
    result["fastest"] = _fastest(result)
    result["summary"] = fastest_line(result)
    return result


def _model_fields(model) -> dict:
    return {"name": model.name, **model.architecture, "params": int(model.count_params())}


def _add_ratios(result) -> None:
    """`throughput_ratio` (x the reference's images/s) and `latency_ratio` (x its ms)."""
    reference = result["runtimes"].get(result["reference"] or "")
    if reference is None:
        return
    for row in result["runtimes"].values():
        row["throughput_ratio"] = (
            row["throughput"]["images_per_s"] / reference["throughput"]["images_per_s"]
        )
        row["latency_ratio"] = row["latency"]["median_ms"] / reference["latency"]["median_ms"]


def _fastest(result) -> dict:
    ours = {name: row for name, row in result["runtimes"].items() if name != result["reference"]}
    if not ours:
        return {"throughput": None, "latency": None}
    return {
        "throughput": max(ours, key=lambda name: ours[name]["throughput"]["images_per_s"]),
        "latency": min(ours, key=lambda name: ours[name]["latency"]["median_ms"]),
    }


def fastest_line(result: dict) -> str:
    """`fastest here (CPU (features), N threads): throughput X ... ; batch-1 latency Y ...`."""
    machine = result["machine"]
    where = f"{host.features_line(machine)}, {machine['num_threads']} threads"
    fastest, rows = result["fastest"], result["runtimes"]
    if fastest["throughput"] is None:
        return f"fastest here ({where}): nothing was timed"
    many, one = rows[fastest["throughput"]], rows[fastest["latency"]]
    against = result["reference"]
    many_ratio = f" ({many['throughput_ratio']:.2f}x {against})" if against else ""
    one_ratio = f" ({one['latency_ratio']:.2f}x {against}'s)" if against else ""
    return (
        f"fastest here ({where}): throughput {fastest['throughput']} "
        f"{many['throughput']['images_per_s']:.1f} img/s at batch "
        f"{many['throughput']['batch_size']}{many_ratio}; batch-1 latency {fastest['latency']} "
        f"{one['latency']['median_ms']:.1f} ms median{one_ratio}"
    )
