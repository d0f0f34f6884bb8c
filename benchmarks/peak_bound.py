"""How near a DeiT's matrix products alone come to the CPU's fp32 peak: the bound on "% of peak".

Times each matrix product of one DeiT forward pass at one batch size, alone, four
ways: one op over every core (TensorFlow's oneDNN kernel, a `tf.function` without
XLA), the same op compiled by XLA, and the batch in two and in four parts side by side
(independent oneDNN ops in one graph, as `models/cpu_predict.py`'s shards run). The
fastest way for each product, times its count in the model, adds up to the time the
matrix products need with everything else (LayerNorm, softmax, GELU, reshapes) free:
the best a forward pass could do with these kernels. Against it, in the same run, the
model's `predict_on_batch` (the user's path) and the CPU's nominal fp32 peak
(`throughput.machine`). Random weights and inputs. Writes `--json` (default
`benchmarks/results/peak_bound.json`).

    python benchmarks/peak_bound.py [--model deit_tiny_distilled_patch16_224] \
        [--batch 32 (a multiple of 4)] [--seconds 1.5] [--json PATH]
"""

import argparse
import json
import os
import time

import numpy as np
import tensorflow as tf
from throughput import machine

import deit_keras

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


def in_parts(parts, batched):
    """`a @ b` as `parts` independent products over parts of `a`'s rows (and of a batched `b`)."""

    @tf.function
    def product(a, b):
        lefts = tf.split(a, parts)
        rights = tf.split(b, parts) if batched else [b] * parts
        return [tf.matmul(left, right) for left, right in zip(lefts, rights, strict=True)]

    return product


def time_product(left_shape, right_shape, seconds):
    """Median seconds of one product: `{"onednn", "xla", "halves", "quarters"}`."""
    rng = np.random.default_rng(0)
    left = tf.constant(rng.standard_normal(left_shape, dtype=np.float32))
    right = tf.constant(rng.standard_normal(right_shape, dtype=np.float32))
    batched = len(right_shape) == 3
    ways = {
        "onednn": tf.function(tf.matmul),
        "xla": tf.function(tf.matmul, jit_compile=True),
        "halves": in_parts(2, batched),
        "quarters": in_parts(4, batched),
    }
    return {
        name: median_seconds(
            lambda f=function: tf.nest.map_structure(np.asarray, f(left, right)), seconds
        )
        for name, function in ways.items()
    }


def run(model_name, batch, seconds):
    """The products' times, their sum against the peak, and `predict_on_batch`'s speed."""
    model = deit_keras.create_model(model_name)
    host = machine()
    peak = host["peak_fp32_flops"]
    rows, bound_seconds, product_total = [], 0.0, 0
    for name, count, left, right in matrix_products(model, batch):
        timed = time_product(left, right, seconds)
        best = min(timed, key=timed.get)
        flops = product_flops(left, right)
        rows.append(
            {
                "product": name,
                "count": count,
                "left": left,
                "right": right,
                "gflop_per_s": {way: flops / value / 1e9 for way, value in timed.items()},
                "fastest": best,
            }
        )
        bound_seconds += count * timed[best]
        product_total += count * flops
    images = np.random.default_rng(0).standard_normal(
        (batch, model.image_size, model.image_size, model.in_channels), dtype=np.float32
    )
    model_seconds = median_seconds(lambda: model.predict_on_batch(images), seconds * 4)
    model_flops = model.flops_per_image() * batch
    return {
        "model": model_name,
        "batch": batch,
        "machine": host,
        "products": rows,
        "products_flops_share": product_total / model_flops,
        "products_only_images_per_second": batch / bound_seconds,
        "products_only_fraction_of_peak": product_total / bound_seconds / peak,
        "predict_on_batch_images_per_second": batch / model_seconds,
        "predict_on_batch_fraction_of_peak": model_flops / model_seconds / peak,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_tiny_distilled_patch16_224")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--json", default=os.path.join(RESULTS, "peak_bound.json"))
    args = parser.parse_args()
    if args.batch <= 0 or args.batch % 4:
        parser.error(
            f"--batch must be a positive multiple of 4 (four parts). Received: {args.batch}"
        )
    result = run(args.model, args.batch, args.seconds)
    with open(args.json + ".tmp", "w") as handle:
        json.dump(result, handle, indent=1)
    os.replace(args.json + ".tmp", args.json)
    print(result["machine"]["peak_derivation"])
    for row in result["products"]:
        speeds = ", ".join(f"{way} {value:.0f}" for way, value in row["gflop_per_s"].items())
        print(f"  {row['product']:<16} x{row['count']:<3} GFLOP/s: {speeds}")
    print(
        f"matrix products alone: {result['products_only_images_per_second']:.1f} img/s, "
        f"{100 * result['products_only_fraction_of_peak']:.0f}% of peak; predict_on_batch "
        f"{result['predict_on_batch_images_per_second']:.1f} img/s, "
        f"{100 * result['predict_on_batch_fraction_of_peak']:.0f}% of peak"
    )


if __name__ == "__main__":
    main()
