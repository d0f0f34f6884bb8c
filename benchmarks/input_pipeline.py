"""Images/s of the DeiT training input pipeline on ImageNet-style JPEGs.

Generates a few hundred ~500x375 JPEGs into a temporary `folder:` dataset
and times `make_dataset(..., image_size=224)` with the full recipe on/off,
RandAugment per image vs batched, and KerasCV's RandAugment for comparison.
Writes `benchmarks/results/input_pipeline.json`.

    python benchmarks/input_pipeline.py [--images 320] [--batches 20]
"""

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from deit_keras.data import augment, make_dataset

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def write_jpegs(root, count, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    for split, n in (("train", count), ("val", classes)):
        for i in range(n):
            class_dir = os.path.join(root, split, f"c{i % classes}")
            os.makedirs(class_dir, exist_ok=True)
            # Smooth colour blobs + noise: JPEG sizes like natural photos.
            small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
            array = np.asarray(image).astype(np.int16)
            array = array + rng.integers(-20, 21, array.shape)
            Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(
                os.path.join(class_dir, f"{i}.jpg"), quality=90
            )


def images_per_second(name, config, batch_size, batches, training=True):
    ds = make_dataset(
        name,
        "train" if training else "eval",
        image_size=224,
        batch_size=batch_size,
        training=training,
        augment=config,
        seed=0,
    ).repeat()
    iterator = iter(ds)
    next(iterator)  # warm-up: tracing, first files
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        images, _ = next(iterator)
    _ = images.numpy()
    return batches * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    full = augment.AugmentConfig()
    cases = {
        "recipe_off (crop+flip only)": augment.NO_AUGMENT,
        "recipe_on, RandAugment per image (default)": full,
        "recipe_on, keras_cv RandAugment per image": augment.AugmentConfig(
            rand_augment_impl="keras_cv"
        ),
    }
    results = {}
    with tempfile.TemporaryDirectory() as root:
        write_jpegs(root, args.images)
        name = "folder:" + root
        for label, config in cases.items():
            results[label] = images_per_second(name, config, args.batch_size, args.batches)
            print(f"{label:45s} {results[label]:8.1f} images/s", flush=True)
        results["eval (resize 256 + centre crop 224)"] = images_per_second(
            name, full, args.batch_size, args.batches, training=False
        )
        print(
            f"{'eval (resize 256 + centre crop 224)':45s} "
            f"{results['eval (resize 256 + centre crop 224)']:8.1f} images/s"
        )
    report = {
        "images_per_second": results,
        "image_size": 224,
        "source_images": f"{args.images} JPEGs 500x375 via folder:",
        "batch_size": args.batch_size,
        "timed_batches": args.batches,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
    }
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "input_pipeline.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    main()
