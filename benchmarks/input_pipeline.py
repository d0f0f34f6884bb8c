"""Images/s of the DeiT training input pipeline on ImageNet-style JPEGs.

Generates a few hundred ~500x375 JPEGs into a temporary `folder:` dataset
and times `make_dataset(..., image_size=224)` with the full recipe on/off,
RandAugment per image vs batched, and KerasCV's RandAugment for comparison.
With `--reference=timm` it also times, on the same JPEGs and in the same run
(interleaved with ours), timm's training transform in a torch `DataLoader`:
`create_transform(224, is_training=True, auto_augment="rand-m9-mstd0.5-inc1",
re_prob=0.25, interpolation="bicubic")` (random resized crop, flip, RandAugment m9,
erasing) with `timm.data.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)`
on each batch: the DeiT recipe as the official `main.py` builds it. Both sides use every
core this process may use (tf.data's AUTOTUNE; `num_workers` = those cores), so images/s
per core is the total over them on both sides (`taskset -c 0` measures one core). timm
needs the test extra (torch, torchvision, timm) and torchvision's op-registration stub
(`torch_env.py`, as tests/conftest.py). Writes `--json` (default
`benchmarks/results/input_pipeline.json`).

    python benchmarks/input_pipeline.py [--images 320] [--batches 20] \
        [--reference timm] [--rounds 3] [--json PATH]
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

from deit_keras.data import augment_config, make_dataset
from deit_keras.inference import host

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


def posterize_zero_bits_too(posterize):
    """Pillow's posterize, also for 0 bits (the all-black image that 0 bits kept means).

    timm 1.0.31's RandAugment asks for 4 down to 0 bits ("inc1"); Pillow 13 refuses 0,
    which older Pillow computed (mask 0).
    """

    def posterize_any(image, bits):
        return posterize(image, bits) if bits >= 1 else Image.new(image.mode, image.size)

    return posterize_any


def timm_loader(root, batch_size, workers):
    """timm's DeiT training transform + Mixup/CutMix in a torch DataLoader over `root/train`."""
    import torch
    import torch_env  # noqa: F401 (the torchvision stub, before torch libraries)
    from PIL import ImageOps
    from timm.data import Mixup, create_transform
    from torchvision.datasets import ImageFolder

    ImageOps.posterize = posterize_zero_bits_too(ImageOps.posterize)  # forked workers too

    transform = create_transform(
        224,
        is_training=True,
        auto_augment="rand-m9-mstd0.5-inc1",
        re_prob=0.25,
        interpolation="bicubic",
    )
    dataset = ImageFolder(os.path.join(root, "train"), transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=True,
    )
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
    return loader, mixup


def timm_images_per_second(loader, mixup, batches):
    def forever():
        while True:
            yield from loader

    iterator = forever()
    next(iterator)  # warm-up: worker start, first files
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        images, targets = next(iterator)
        images, targets = mixup(images, targets)
    return batches * images.shape[0] / (time.perf_counter() - start)


def compare_with_timm(name, root, args):
    """Ours (full recipe) and timm's, interleaved `args.rounds` times; the median ratio."""
    cores = usable_cores()
    loader, mixup = timm_loader(root, args.batch_size, cores)
    full = augment_config.AugmentConfig()
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(images_per_second(name, full, args.batch_size, args.batches))
        theirs.append(timm_images_per_second(loader, mixup, args.batches))
        print(f"round: deit_keras {ours[-1]:6.1f} img/s, timm {theirs[-1]:6.1f} img/s", flush=True)
    ratios = sorted(a / b for a, b in zip(ours, theirs, strict=True))
    return {
        "deit_keras_images_per_second": ours,
        "timm_images_per_second": theirs,
        "deit_keras_per_core_median": float(np.median(ours)) / cores,
        "timm_per_core_median": float(np.median(theirs)) / cores,
        "ratio_median": ratios[len(ratios) // 2],
        "timm_transform": "create_transform(224, is_training=True, auto_augment="
        "'rand-m9-mstd0.5-inc1', re_prob=0.25, interpolation='bicubic') + "
        "Mixup(0.8, cutmix 1.0, smoothing 0.1), DataLoader(num_workers=cpu_count)",
    }


def usable_cores():
    """The CPUs this process may run on (taskset / cgroup affinity), as tf.data sees them."""
    return len(os.sched_getaffinity(0))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--reference", choices=["none", "timm"], default="none")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=os.path.join(RESULTS, "input_pipeline.json"))
    args = parser.parse_args()
    full = augment_config.AugmentConfig()
    cases = {
        "recipe_off (crop+flip only)": augment_config.NO_AUGMENT,
        "recipe_on, RandAugment per image (default)": full,
        "recipe_on, keras_cv RandAugment per image": augment_config.AugmentConfig(
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
        timm = compare_with_timm(name, root, args) if args.reference == "timm" else None
    report = {
        "images_per_second": results,
        "image_size": 224,
        "source_images": f"{args.images} JPEGs 500x375 via folder:",
        "batch_size": args.batch_size,
        "timed_batches": args.batches,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "cpu": host.cpu_info(),
        "load_average_at_end": os.getloadavg(),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
    }
    if timm is not None:
        report["against_timm"] = timm
        ratio = timm["ratio_median"]
        print(f"deit_keras / timm (median of {args.rounds} interleaved rounds): {ratio:.2f}x")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print("wrote", args.json)


if __name__ == "__main__":
    main()
