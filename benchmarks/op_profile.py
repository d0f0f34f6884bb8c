"""Where a DeiT forward pass spends its time on this CPU: each op kind's share, from `tf.profiler`.

Profiles `--calls` calls of the user's path (`predict_on_batch`: on a CPU the
shards of `models/cpu_predict.py` for large batches, TensorFlow ops on oneDNN)
or of one XLA computation (`tf.function(jit_compile=True)`: XLA's thunks), after
warm-up calls, and prints each op kind's total time and share, largest first.
Op kinds: TensorFlow op types (`_MklNativeFusedMatMul`, `Mul`, ...) from the
profiler's framework op statistics, or XLA thunk names without their numeric
suffix (`MatMul`, `dot`, `multiply_bitcast_fusion`, ...) from its trace. Times
add up over threads, so with shards side by side they exceed the wall time.
Random weights and inputs.

    python benchmarks/op_profile.py [--model deit_tiny_distilled_patch16_224] \\
        [--batch 32] [--path predict_on_batch|xla] [--calls 5] [--top 15] [--json PATH]
"""

import argparse
import collections
import glob
import json
import re
import tempfile

import numpy as np
import tensorflow as tf
from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as profiler_tools

import deit_keras
from deit_keras.io import atomic

# Trace events that enclose the thunks rather than compute (XLA path).
ENCLOSING = re.compile(
    r"^(ThreadpoolListener|TFE_Py|Eager|CpuExecutable|ThunkExecutor|BlockUntilReady"
    r"|SlinkyThreadPool|__inference|<lambda>|end: )"
)


def profiled(call, calls, directory):
    """Runs `call()` `calls` times under `tf.profiler`; returns the XSpace file's path."""
    tf.profiler.experimental.start(directory)
    for _ in range(calls):
        call()
    tf.profiler.experimental.stop()
    return glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)[0]


def tool_data(xspace, tool):
    """One of the profiler's tools' JSON (`framework_op_stats`, `trace_viewer@`) of `xspace`."""
    data, _ = profiler_tools.xspace_to_tools_data([xspace], tool, {})
    return json.loads(data)


def framework_op_times(xspace):
    """`{TensorFlow op type: self microseconds}` (framework op statistics, idle time left out)."""
    table = tool_data(xspace, "framework_op_stats")[0]
    columns = [column["id"] for column in table["cols"]]
    times = collections.Counter()
    for row in table["rows"]:
        fields = dict(zip(columns, (cell.get("v") for cell in row["c"]), strict=True))
        if fields["type"] != "IDLE":
            times[fields["type"]] += fields["total_self_time"]
    return times


def xla_thunk_times(xspace):
    """`{XLA thunk name without its numeric suffix: microseconds}` (trace events)."""
    trace = tool_data(xspace, "trace_viewer@")
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    times = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and not ENCLOSING.match(event["name"]):
            times[re.sub(r"[._]\d+$", "", event["name"])] += event.get("dur", 0)
    return times


def profile(model_name, batch, path, calls):
    """`{op kind: share of the profiled time}` and the total, largest first."""
    model = deit_keras.create_model(model_name)
    shape = (batch, model.image_size, model.image_size, model.in_channels)
    images = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    if path == "xla":
        forward = tf.function(lambda batch: model(batch, training=False), jit_compile=True)
        tensor = tf.constant(images)
        call, op_times = (lambda: forward(tensor).numpy()), xla_thunk_times
    else:
        call, op_times = (lambda: model.predict_on_batch(images)), framework_op_times
    for _ in range(3):
        call()
    with tempfile.TemporaryDirectory() as directory:
        times = op_times(profiled(call, calls, directory))
    total = sum(times.values())
    return {
        "model": model_name,
        "batch": batch,
        "path": path,
        "calls": calls,
        "total_ms": total / 1e3,
        "ops": [
            {"op": op, "ms": value / 1e3, "share": value / total}
            for op, value in times.most_common()
        ],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_tiny_distilled_patch16_224")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--path", choices=("predict_on_batch", "xla"), default="predict_on_batch")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.batch <= 0 or args.calls <= 0:
        parser.error(f"--batch and --calls must be positive. Received: {args.batch}, {args.calls}")
    result = profile(args.model, args.batch, args.path, args.calls)
    if args.json:
        atomic.write_text_atomic(args.json, json.dumps(result, indent=1) + "\n")
    print(
        f"{args.path}, batch {args.batch}, {args.calls} calls: {result['total_ms']:.0f} ms of ops"
    )
    for row in result["ops"][: args.top]:
        print(f"  {row['op']:<32} {row['ms']:9.1f} ms {100 * row['share']:5.1f}%")


if __name__ == "__main__":
    main()
