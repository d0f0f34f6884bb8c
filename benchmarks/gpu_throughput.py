"""DeiT training and inference throughput on a GPU: our Keras models against timm's PyTorch.

The paper's Table 1 gives inference throughput on one 16 GB V100 (images/s
at 224 px, the largest batch that fits: DeiT-Ti 2536, S 940, B 292). This
times, on whatever GPU the machine has, each of `--frameworks` in turn (run
one per process where both hold the GPU's memory):

- `keras`: our models (`deit_keras.models.build_model`) under the Keras
  backend `KERAS_BACKEND` names, compiled by XLA, in mixed precision.
  JAX: inference and one training step as jitted `stateless_call`s (what
  Keras' JAX trainer runs); TensorFlow: `predict_on_batch` and
  `train_on_batch` of a model compiled with `jit_compile=True`.
- `timm`: timm's same-named models in PyTorch eager mode under `torch.autocast`
  (`--torch_compile`: under `torch.compile`).

A training step is the DeiT⚗ objective without the teacher's forward pass:
cross-entropy of the class head on the labels plus that of the dist head on
fixed "teacher" labels, halved; drop-path 0.1; AdamW (lr 5e-4 x batch/512,
weight decay 0.05). Random weights and images (never zeros). On TensorFlow the
training rows are the library's own step instead (`compile(distillation="none")`,
one-hot labels).

`--attention explicit` (Keras rows) makes the self-attention layers run their
matmul/softmax/matmul on JAX too, the form they had before they called
`keras.ops.dot_product_attention` there (the layers' default, `library`).

    KERAS_BACKEND=jax python benchmarks/gpu_throughput.py \\
        --frameworks keras,timm --models deit_tiny_distilled_patch16_224 \\
        [--precision bf16] [--infer_batch 512] [--train_batch 128] [--seconds 5] [--json PATH]
"""

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# keras_policy, torch dtype name
PRECISIONS = {
    "bf16": ("mixed_bfloat16", "bfloat16"),
    "fp16": ("mixed_float16", "float16"),
    "fp32": ("float32", None),
}
NUM_CLASSES = 1000
IMAGE_SIZE = 224


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", default="keras,timm")
    parser.add_argument(
        "--models",
        default="deit_tiny_distilled_patch16_224,deit_small_distilled_patch16_224,"
        "deit_base_distilled_patch16_224",
    )
    parser.add_argument("--modes", default="infer,train")
    parser.add_argument("--precision", default="bf16", choices=sorted(PRECISIONS))
    parser.add_argument("--infer_batch", type=int, default=512)
    parser.add_argument("--train_batch", type=int, default=128)
    parser.add_argument("--image_size", type=int, default=IMAGE_SIZE)
    parser.add_argument("--depth", type=int, default=None, help="fewer blocks (a quick check)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per row")
    parser.add_argument("--attention", default="library", choices=["library", "explicit"])
    parser.add_argument("--torch_compile", action="store_true", help="timm under torch.compile")
    parser.add_argument("--torch_device", default="cuda", help="cpu: a check of the timm rows")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    for option in ("infer_batch", "train_batch", "image_size"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be >= 1. Received: {getattr(args, option)}")
    return args


def timed(run_once, sync, seconds, batch):
    """Images/s of `run_once` (returns something `sync` waits on), after two warm-up calls.

    Calls are queued back to back and waited on once per round, as a training
    loop runs; rounds of doubling length until `seconds` have passed.
    """
    sync(run_once())
    sync(run_once())
    calls, elapsed, count = 0, 0.0, 1
    while elapsed < seconds:
        start = time.perf_counter()
        for _ in range(count):
            out = run_once()
        sync(out)
        elapsed += time.perf_counter() - start
        calls += count
        count *= 2
    return calls * batch / elapsed


def random_batch(batch, image_size, seed):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch, image_size, image_size, 3)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, size=batch).astype("int32")
    teacher_labels = rng.integers(0, NUM_CLASSES, size=batch).astype("int32")
    return images, labels, teacher_labels


# === Keras (our models) ===


def keras_model(name, args, training):
    import keras

    from deit_keras.models import build_model

    keras.mixed_precision.set_global_policy(PRECISIONS[args.precision][0])
    overrides = {"depth": args.depth} if args.depth else {}
    model = build_model(
        name,
        image_size=args.image_size,
        num_classes=NUM_CLASSES,
        drop_path_rate=0.1 if training else 0.0,
        **overrides,
    )
    return model


def keras_optimizer(batch):
    import keras

    return keras.optimizers.AdamW(learning_rate=5e-4 * batch / 512, weight_decay=0.05)


def distillation_loss(cls_logits, dist_logits, labels, teacher_labels):
    from keras import ops

    def cross_entropy(targets, logits):
        return ops.mean(
            ops.sparse_categorical_crossentropy(
                targets, ops.cast(logits, "float32"), from_logits=True
            )
        )

    return 0.5 * cross_entropy(labels, cls_logits) + 0.5 * cross_entropy(
        teacher_labels, dist_logits
    )


def keras_jax_infer(name, args):
    import jax

    model = keras_model(name, args, training=False)
    trainable = [v.value for v in model.trainable_variables]
    fixed = [v.value for v in model.non_trainable_variables]

    @jax.jit
    def forward(trainable, fixed, images):
        logits, _ = model.stateless_call(trainable, fixed, images, training=False)
        return logits

    images = jax.device_put(random_batch(args.infer_batch, args.image_size, 0)[0])
    return timed(
        lambda: forward(trainable, fixed, images),
        jax.block_until_ready,
        args.seconds,
        args.infer_batch,
    )


def keras_jax_train(name, args):
    import jax

    model = keras_model(name, args, training=True)
    optimizer = keras_optimizer(args.train_batch)
    optimizer.build(model.trainable_variables)

    def loss_of(trainable, fixed, images, labels, teacher_labels):
        (cls_logits, dist_logits), fixed = model.stateless_call(
            trainable, fixed, images, training=True
        )
        return distillation_loss(cls_logits, dist_logits, labels, teacher_labels), fixed

    gradients_of = jax.value_and_grad(loss_of, has_aux=True)

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(trainable, fixed, optimizer_state, images, labels, teacher_labels):
        (loss, fixed), gradients = gradients_of(trainable, fixed, images, labels, teacher_labels)
        trainable, optimizer_state = optimizer.stateless_apply(
            optimizer_state, gradients, trainable
        )
        return trainable, fixed, optimizer_state, loss

    state = [
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    ]
    batch = [jax.device_put(a) for a in random_batch(args.train_batch, args.image_size, 1)]

    def run_once():
        trainable, fixed, optimizer_state, loss = step(*state, *batch)
        state[:] = [trainable, fixed, optimizer_state]
        return loss

    return timed(run_once, jax.block_until_ready, args.seconds, args.train_batch)


def keras_tensorflow_infer(name, args):
    model = keras_model(name, args, training=False)
    model.compile(jit_compile=True)
    images = random_batch(args.infer_batch, args.image_size, 0)[0]
    return timed(
        lambda: model.predict_on_batch(images), lambda out: None, args.seconds, args.infer_batch
    )


def keras_tensorflow_train(name, args):
    import keras

    model = keras_model(name, args, training=True)
    model.compile(optimizer=keras_optimizer(args.train_batch), jit_compile=True)
    images, labels, _ = random_batch(args.train_batch, args.image_size, 1)
    targets = keras.ops.one_hot(labels, NUM_CLASSES)
    return timed(
        lambda: model.train_on_batch(images, targets),
        lambda out: None,
        args.seconds,
        args.train_batch,
    )


def keras_rows(args):
    import keras

    backend = keras.backend.backend()
    runners = {
        "jax": {"infer": keras_jax_infer, "train": keras_jax_train},
        "tensorflow": {"infer": keras_tensorflow_infer, "train": keras_tensorflow_train},
    }
    if backend not in runners:
        raise SystemExit(
            f"error: Keras backend {backend!r} is not timed here; use jax or tensorflow"
        )
    if backend == "jax" and args.precision == "fp16" and "train" in args.modes.split(","):
        raise SystemExit("error: fp16 training on JAX needs loss scaling, not done here; use bf16")
    label = f"keras-{backend}"
    if args.attention == "explicit" and backend == "tensorflow":
        raise SystemExit("error: --attention explicit: on TensorFlow the layers run it already")
    if args.attention == "explicit":
        from deit_keras.layers.attention import MultiHeadSelfAttention

        MultiHeadSelfAttention._fusable = False
        label += "-explicit-attention"
    return label, runners[backend]


# === PyTorch (timm) ===


def timm_model(name, args, training):
    import timm

    overrides = {"depth": args.depth} if args.depth else {}
    model = timm.create_model(
        name,
        pretrained=False,
        num_classes=NUM_CLASSES,
        img_size=args.image_size,
        drop_path_rate=0.1 if training else 0.0,
        **overrides,
    )
    if hasattr(model, "set_distilled_training"):
        model.set_distilled_training(training)
    model = model.to(args.torch_device).train(training)
    if args.torch_compile:
        import torch

        return torch.compile(model)
    return model


def autocast(args):
    import torch

    dtype = PRECISIONS[args.precision][1]
    return torch.autocast(
        args.torch_device, dtype=getattr(torch, dtype or "float32"), enabled=dtype is not None
    )


def torch_batch(batch, args, seed):
    import torch

    images, labels, teacher_labels = random_batch(batch, args.image_size, seed)
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    tensors = images, torch.from_numpy(labels).long(), torch.from_numpy(teacher_labels).long()
    return [tensor.to(args.torch_device) for tensor in tensors]


def torch_sync(args):
    import torch

    if args.torch_device == "cuda":
        return lambda out: torch.cuda.synchronize()
    return lambda out: None


def timm_infer(name, args):
    import torch

    model = timm_model(name, args, training=False)
    images = torch_batch(args.infer_batch, args, 0)[0]

    def run_once():
        with torch.inference_mode(), autocast(args):
            return model(images)

    return timed(run_once, torch_sync(args), args.seconds, args.infer_batch)


def timm_train(name, args):
    import torch
    import torch.nn.functional as F

    model = timm_model(name, args, training=True)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=5e-4 * args.train_batch / 512, weight_decay=0.05
    )
    scaler = torch.amp.GradScaler(enabled=args.precision == "fp16")
    images, labels, teacher_labels = torch_batch(args.train_batch, args, 1)

    def run_once():
        optimizer.zero_grad(set_to_none=True)
        with autocast(args):
            cls_logits, dist_logits = model(images)
            loss = 0.5 * F.cross_entropy(cls_logits.float(), labels) + 0.5 * F.cross_entropy(
                dist_logits.float(), teacher_labels
            )
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss

    return timed(run_once, torch_sync(args), args.seconds, args.train_batch)


def timm_rows(args):
    import torch

    if args.torch_device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "error: the timm rows need a CUDA GPU (torch.cuda.is_available() is False)"
        )
    label = f"timm-torch{torch.__version__}" + ("-compile" if args.torch_compile else "")
    return label, {"infer": timm_infer, "train": timm_train}


# === Driver ===


def gpu_name():
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no nvidia-smi)"


def versions(frameworks):
    """The versions of what ran: Keras and its backend, or PyTorch and timm."""
    found = {}
    if "keras" in frameworks:
        import keras

        found.update(keras=keras.__version__, keras_backend=keras.backend.backend())
    if "timm" in frameworks:
        import timm
        import torch

        found.update(torch=torch.__version__, timm=timm.__version__)
    return found


def main(argv=None):
    args = parse_args(argv)
    rows = []
    for framework in args.frameworks.split(","):
        label, runners = {"keras": keras_rows, "timm": timm_rows}[framework](args)
        for name in args.models.split(","):
            for mode in args.modes.split(","):
                start = time.perf_counter()
                row = {
                    "framework": label,
                    "model": name,
                    "mode": mode,
                    "precision": args.precision,
                    "batch": args.infer_batch if mode == "infer" else args.train_batch,
                }
                try:
                    row["images_per_s"] = round(runners[mode](name, args), 1)
                except Exception as error:  # a row that fails (OOM, ...) is reported, not fatal
                    row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
                row["seconds_with_compile"] = round(time.perf_counter() - start, 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "command": " ".join(sys.argv),
        "versions": versions(args.frameworks.split(",")),
        "rows": rows,
    }
    if args.json:
        with open(args.json + ".tmp", "w", encoding="utf-8") as file:
            json.dump(report, file, indent=1)
        os.replace(args.json + ".tmp", args.json)
    print(f"\n{report['gpu']}, {args.precision}")
    for row in rows:
        value = row.get("images_per_s", row.get("error"))
        batch = f"b{row['batch']}"
        print(f"{row['framework']:28s} {row['model']:36s} {row['mode']:5s} {batch:5s} {value}")


if __name__ == "__main__":
    main()
