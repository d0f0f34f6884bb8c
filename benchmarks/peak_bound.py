"""How near a DeiT's matrix products alone come to the CPU's fp32 peak: the bound on "% of peak".

Times each matrix product of one DeiT forward pass at one batch size, alone, in
every way at hand: one op over every core (TensorFlow's oneDNN kernel, a `tf.function`
without XLA), the same op compiled by XLA, the rows in two and in four parts side by
side (independent oneDNN ops in one graph, as `models/cpu_predict.py`'s shards run;
where the product has that many rows), and, with `openvino` installed, the op as a
one-node OpenVINO model in float32 (the kernels of the fastest fp32 export at batch 1).
The fastest way for each product, times its count in the model, adds up to the time
the matrix products need with everything else (LayerNorm, softmax, GELU, reshapes)
free: the best a forward pass could do with these kernels; the same sum over the
OpenVINO way alone bounds the OpenVINO export. Against them, in the same run, the
model's `predict_on_batch` (the user's path), its OpenVINO fp32 export, and two fp32
peaks: the nominal one (`throughput.machine`: cores x `/proc/cpuinfo`'s clock x vector
width) and the measured one, the fastest rate of this run (a large square product's or
one of the model's products'). Boost clocks run above the clock `/proc/cpuinfo`
reports, so the nominal peak can be exceeded; the measured one is a lower bound on the
true peak. Random weights and inputs. Writes `--json` (default
`benchmarks/results/peak_bound.json`).

    python benchmarks/peak_bound.py [--model deit_tiny_distilled_patch16_224] \
        [--batch 32] [--seconds 1.5] [--json PATH]
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np
import tensorflow as tf
from throughput import machine

import deit_keras
from deit_keras.deploy import openvino_export
from deit_keras.deploy.runtimes import ExportedModel
from deit_keras.inference import bench_runtimes
from deit_keras.io import atomic

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def matrix_products(model, batch):
    """`[(name, count in a forward pass, left shape, right shape)]`; batched when 3-d."""
    tokens = model.grid_size**2 + model.num_prefix_tokens
    width, heads = model.embed_dim, model.num_heads
    hidden, rows = int(model.mlp_ratio * width), batch * tokens
    patch = model.patch_size**2 * model.in_channels
    depth = model.depth
    return [
        ("patch embedding", 1, (batch * model.grid_size**2, patch), (patch, width)),
        ("qkv", depth, (rows, width), (width, 3 * width)),
        (
            "q k^T",
            depth,
            (batch * heads, tokens, width // heads),
            (batch * heads, width // heads, tokens),
        ),
        (
            "attention v",
            depth,
            (batch * heads, tokens, tokens),
            (batch * heads, tokens, width // heads),
        ),
        ("projection", depth, (rows, width), (width, width)),
        ("mlp fc1", depth, (rows, width), (width, hidden)),
        ("mlp fc2", depth, (rows, hidden), (hidden, width)),
    ]


def product_flops(left, right):
    """FLOPs (2 per multiply-add) of `left @ right`, batched when 3-d."""
    return 2 * int(np.prod(left)) * right[-1]


def median_seconds(call, seconds):
    """Median seconds of `call()` over `seconds` (at least 5 calls), after one untimed call."""
    call()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        tick = time.perf_counter()
        call()
        times.append(time.perf_counter() - tick)
    return float(np.median(times))


# A square product this large keeps the kernels near their best on any CPU.
PEAK_SIDE = 2048


def measured_peak(rows, seconds):
    """The fastest fp32 FLOP/s of this run: a large square product's or a model product's.

    A lower bound on the CPU's true peak, so fractions of it are upper bounds.
    """
    square = (PEAK_SIDE, PEAK_SIDE)
    timed = time_product(square, square, seconds, with_openvino=False)
    square_rate = product_flops(square, square) / min(timed.values())
    return max([square_rate] + [1e9 * max(row["gflop_per_s"].values()) for row in rows])


def fractions(flops_per_second, peaks):
    """`flops_per_second` as a fraction of each of `peaks` (`{name: FLOP/s}`)."""
    return {name: flops_per_second / peak for name, peak in peaks.items()}


def part_sizes(rows, parts):
    """Near-equal sizes of `parts` parts of `rows`, larger first."""
    base, extra = divmod(rows, parts)
    return [base + (index < extra) for index in range(parts)]


def in_parts(parts, rows, batched):
    """`a @ b` as `parts` independent products over parts of `a`'s rows (and of a batched `b`)."""
    sizes = part_sizes(rows, parts)

    @tf.function
    def product(a, b):
        lefts = tf.split(a, sizes)
        rights = tf.split(b, sizes) if batched else [b] * parts
        return [tf.matmul(left, right) for left, right in zip(lefts, rights, strict=True)]

    return product


def tensorflow_ways(rows, batched):
    """`{way: tf.function(a, b)}`; the split ways only where each part gets a row."""
    ways = {
        "onednn": tf.function(tf.matmul),
        "xla": tf.function(tf.matmul, jit_compile=True),
    }
    for name, parts in (("halves", 2), ("quarters", 4)):
        if rows >= parts:
            ways[name] = in_parts(parts, rows, batched)
    return ways


# The OpenVINO way runs a product this many times in one call (separate inputs and
# weights, as a model's blocks have), so the call's fixed cost (~0.05 ms, as much as a
# batch-1 product's own time) is spread over them as it is over a whole model's products.
OPENVINO_REPEATS = 12


def openvino_call(left, right, batched):
    """`left @ right` as float32 OpenVINO: a call computes it `OPENVINO_REPEATS` times."""
    import openvino as ov
    import openvino.opset13 as ops

    lefts = [ops.parameter(left.shape, np.float32) for _ in range(OPENVINO_REPEATS)]
    if batched:
        rights = [ops.parameter(right.shape, np.float32) for _ in range(OPENVINO_REPEATS)]
    else:
        rights = [ops.constant(right + index) for index in range(OPENVINO_REPEATS)]
    products = [ops.matmul(a, b, False, False) for a, b in zip(lefts, rights, strict=True)]
    inputs = lefts + (rights if batched else [])
    # float32 kernels: on CPUs with bf16 OpenVINO would otherwise compute in bf16.
    compiled = ov.Core().compile_model(
        ov.Model(products, inputs), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    request = compiled.create_infer_request()
    feeds = {index: left + index for index in range(OPENVINO_REPEATS)}
    if batched:
        feeds.update({OPENVINO_REPEATS + i: right + i for i in range(OPENVINO_REPEATS)})
    return lambda: request.infer(feeds, share_inputs=True, share_outputs=True)


def time_product(left_shape, right_shape, seconds, with_openvino):
    """Median seconds of one product in each way: onednn, xla, halves, quarters, openvino."""
    rng = np.random.default_rng(0)
    left = rng.standard_normal(left_shape, dtype=np.float32)
    right = rng.standard_normal(right_shape, dtype=np.float32)
    batched = len(right_shape) == 3
    left_tensor, right_tensor = tf.constant(left), tf.constant(right)
    calls = {
        name: lambda f=function: tf.nest.map_structure(np.asarray, f(left_tensor, right_tensor))
        for name, function in tensorflow_ways(left_shape[0], batched).items()
    }
    timed = {name: median_seconds(call, seconds) for name, call in calls.items()}
    if with_openvino:
        repeated = median_seconds(openvino_call(left, right, batched), seconds)
        timed["openvino"] = repeated / OPENVINO_REPEATS
    return timed


def openvino_export_seconds(model, images, seconds):
    """Median seconds of the model's OpenVINO fp32 export (as `deit-export`'s) on `images`."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.xml")
        openvino_export.export_openvino(model, path, "none")
        exported = ExportedModel(path)
        crops = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
        return median_seconds(lambda: exported.run_uint8(crops)["logits"], seconds)


def bound(rows, ways, peaks, product_total, batch):
    """Images/s and fraction of peak of the products alone, each at its fastest of `ways`.

    `ways=None`: each product at the fastest of the ways it was timed in.
    """
    total = sum(
        row["count"]
        * min(value for way, value in row["seconds"].items() if ways is None or way in ways)
        for row in rows
    )
    return {
        "ways": "all" if ways is None else list(ways),
        "images_per_second": batch / total,
        "fraction_of_peak": fractions(product_total / total, peaks),
    }


def run(model_name, batch, seconds):
    """The products' times, their sum against the peak, and the model's speed as run."""
    model = deit_keras.create_model(model_name)
    host = machine()
    # The OpenVINO export needs tf2onnx and onnx too: the same check as deit-benchmark's.
    with_openvino = bench_runtimes.RUNTIMES["openvino"].missing_module() is None
    rows, product_total = [], 0
    for name, count, left, right in matrix_products(model, batch):
        timed = time_product(left, right, seconds, with_openvino)
        flops = product_flops(left, right)
        rows.append(
            {
                "product": name,
                "count": count,
                "left": left,
                "right": right,
                "seconds": timed,
                "gflop_per_s": {way: flops / value / 1e9 for way, value in timed.items()},
                "fastest": min(timed, key=timed.get),
            }
        )
        product_total += count * flops
    peaks = {"nominal": host["peak_fp32_flops"], "measured": measured_peak(rows, seconds)}
    images = np.random.default_rng(0).standard_normal(
        (batch, model.image_size, model.image_size, model.in_channels), dtype=np.float32
    )
    model_flops = model.flops_per_image() * batch
    runs = {"predict_on_batch": median_seconds(lambda: model.predict_on_batch(images), seconds * 4)}
    bounds = {"every way": bound(rows, None, peaks, product_total, batch)}
    if with_openvino:
        runs["openvino fp32 export"] = openvino_export_seconds(model, images, seconds * 4)
        bounds["openvino"] = bound(rows, ["openvino"], peaks, product_total, batch)
    return {
        "model": model_name,
        "batch": batch,
        "machine": host,
        "peaks_flops": peaks,
        "products": rows,
        "products_flops_share": product_total / model_flops,
        "products_only": bounds,
        "models": {
            name: {
                "images_per_second": batch / value,
                "milliseconds": 1e3 * value,
                "fraction_of_peak": fractions(model_flops / value, peaks),
            }
            for name, value in runs.items()
        },
    }


def of_peaks(value):
    """`value`'s fractions of the peaks as text: "70% of the nominal peak, ..."."""
    shares = value["fraction_of_peak"]
    return ", ".join(f"{100 * share:.0f}% of the {name} peak" for name, share in shares.items())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_tiny_distilled_patch16_224")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--json", default=os.path.join(RESULTS, "peak_bound.json"))
    args = parser.parse_args()
    if args.batch <= 0:
        parser.error(f"--batch must be a positive number of images. Received: {args.batch}")
    result = run(args.model, args.batch, args.seconds)
    atomic.write_text_atomic(args.json, json.dumps(result, indent=1) + "\n")
    print(result["machine"]["peak_derivation"])
    print(
        f"measured peak: {result['peaks_flops']['measured'] / 1e9:.0f} GFLOP/s "
        f"(the fastest of a {PEAK_SIDE}-square product and the products below)"
    )
    for row in result["products"]:
        speeds = ", ".join(f"{way} {value:.0f}" for way, value in row["gflop_per_s"].items())
        print(f"  {row['product']:<16} x{row['count']:<3} GFLOP/s: {speeds}")
    for name, value in result["products_only"].items():
        print(
            f"matrix products alone ({name}): {value['images_per_second']:.1f} img/s, "
            f"{of_peaks(value)}"
        )
    for name, value in result["models"].items():
        print(
            f"{name}: {value['images_per_second']:.1f} img/s, {value['milliseconds']:.1f} ms "
            f"a batch, {of_peaks(value)}"
        )


if __name__ == "__main__":
    main()
