"""Images/s of `deit-evaluate`'s forward pass on a CPU: in shards against one plain graph.

`inference.evaluate.outputs_function` (what `evaluate_model` / `deit-evaluate`
run) splits a batch with the work for it into shards on a CPU
(`models/cpu_predict.py`); before, the heads ran in one `tf.function` without
XLA. This times both on the same cached batches of random 224 px images, in
interleaved turns in one process (the order alternating each turn), with the
model's random weights, and reports the median images/s of each and their ratio.
Writes `--json` (default `benchmarks/results/evaluate_speed.json`).

    python benchmarks/evaluate_speed.py [--model deit_tiny_distilled_patch16_224] \
        [--batch_size 64] [--batches 4] [--turns 6] [--json PATH]
"""

import argparse
import functools
import json
import os

import numpy as np
import tensorflow as tf

import deit_keras
from deit_keras.inference import evaluate
from deit_keras.inference.host import cpu_info

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def one_plain_graph(model):
    """The heads in one `tf.function` without XLA: `outputs_function` before the shards."""
    heads = functools.partial(evaluate.head_outputs, model)
    return tf.function(heads, input_signature=[evaluate.batch_spec(model)])


def random_dataset(model, batch_size, batches, seed=0):
    """`batches` cached batches of random images of the model's size and random labels."""
    rng = np.random.default_rng(seed)
    count = batch_size * batches
    size = model.image_size
    images = rng.standard_normal((count, size, size, model.in_channels)).astype("float32")
    labels = rng.integers(0, model.num_classes, count)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size).cache()


def run(model_name, batch_size, batches, turns):
    """Both sides' images/s per turn, their medians and ratio, and each side's top-1."""
    model = deit_keras.create_model(model_name)
    dataset = random_dataset(model, batch_size, batches)
    sides = {"shards": evaluate.outputs_function(model), "plain": one_plain_graph(model)}
    for outputs_fn in sides.values():  # trace (and fill the cache) outside the turns
        evaluate.evaluate_outputs(outputs_fn, dataset, model.num_classes)
    speeds, top1 = {side: [] for side in sides}, {}
    for turn in range(turns):
        order = list(sides) if turn % 2 == 0 else list(reversed(sides))
        for side in order:
            results = evaluate.evaluate_outputs(sides[side], dataset, model.num_classes)
            speeds[side].append(results["images_per_second"])
            top1[side] = results["top1"]
    medians = {side: float(np.median(values)) for side, values in speeds.items()}
    return {
        "model": model_name,
        "batch_size": batch_size,
        "batches": batches,
        "turns": turns,
        "cpu": cpu_info(),
        "images_per_second": speeds,
        "median_images_per_second": medians,
        "shards_over_plain": medians["shards"] / medians["plain"],
        "top1": top1,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_tiny_distilled_patch16_224")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--json", default=os.path.join(RESULTS, "evaluate_speed.json"))
    args = parser.parse_args()
    result = run(args.model, args.batch_size, args.batches, args.turns)
    with open(args.json + ".tmp", "w") as handle:
        json.dump(result, handle, indent=1)
    os.replace(args.json + ".tmp", args.json)
    medians = result["median_images_per_second"]
    print(
        f"{args.model} batch {args.batch_size}: shards {medians['shards']:.1f} img/s, "
        f"one plain graph {medians['plain']:.1f} ({result['shards_over_plain']:.2f}x)"
    )


if __name__ == "__main__":
    main()
