"""`predict_on_batch` of a saved, loaded model for each `compile(predict_jit_compile=...)` choice.

`deit-train` compiles its student with `jit_compile=True` (the train step in
XLA); a `.keras` file keeps the compile config, so a user's
`keras.models.load_model(path)` predicts the way it says. This times, in
one process and interleaved turns, a model compiled with `jit_compile=True`
and each `predict_jit_compile` (None: as `jit_compile`, one XLA pass;
"auto": the CPU predict step), each saved to `.keras` and loaded. Random
weights and inputs.

    python benchmarks/predict_choice.py [--model deit_tiny_distilled_patch16_224] \\
        [--batch 32] [--turns 6] [--seconds 6] [--json PATH]
"""

import argparse
import json
import os
import tempfile
import time

import keras
import numpy as np

import deit_keras
from deit_keras.inference import host
from deit_keras.io import atomic

CHOICES = {"xla (predict_jit_compile=None)": None, "auto": "auto"}


def loaded_models(name, directory):
    """`{choice label: the model compiled so, saved and loaded}`."""
    models = {}
    for index, (label, choice) in enumerate(CHOICES.items()):
        model = deit_keras.create_model(name)
        model.compile(optimizer="adamw", jit_compile=True, predict_jit_compile=choice)
        path = os.path.join(directory, f"{index}.keras")
        model.save(path)
        models[label] = keras.models.load_model(path)
    return models


def images_per_second(model, images, seconds):
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.predict_on_batch(images)
        count += len(images)
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_tiny_distilled_patch16_224")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        models = loaded_models(args.model, directory)
    first = next(iter(models.values()))
    images = np.random.default_rng(0).standard_normal(
        (args.batch, first.image_size, first.image_size, first.in_channels), dtype=np.float32
    )
    for model in models.values():
        for _ in range(3):
            model.predict_on_batch(images)
    rates = {label: [] for label in models}
    for turn in range(args.turns):
        order = list(models) if turn % 2 == 0 else list(reversed(models))
        for label in order:
            rates[label].append(images_per_second(models[label], images, args.seconds))
    labels = list(models)
    ratios = [auto / xla for xla, auto in zip(rates[labels[0]], rates[labels[1]], strict=True)]
    for label in labels:
        print(f"{label:32s} img/s {np.round(rates[label], 1).tolist()}")
    print(f"auto / xla per turn {np.round(ratios, 2).tolist()}, median {np.median(ratios):.2f}")
    if args.json:
        report = dict(vars(args), cpu=host.cpu_info(), img_per_s=rates, ratios=ratios)
        atomic.write_text_atomic(args.json, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
