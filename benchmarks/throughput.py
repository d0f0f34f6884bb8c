"""Inference and training throughput of deit_keras against the PyTorch reference.

One run, one machine, the same weights on both sides. The reference is the
Hugging Face transformers DeiT (`DeiTForImageClassificationWithTeacher`,
fp32, `torch.inference_mode()`, `torch.set_num_threads(os.cpu_count())`).

Each measured case (side x model x task x batch) runs in its own worker
process, so TensorFlow's and PyTorch's thread pools never share a process
and each worker's peak RSS (`ru_maxrss`) is that case's alone. The two
workers of a case are started together, warmed up, then timed in turns
(A/B/A/B); the figures are medians over `--repeats` turns and every claim
is the ratio deit_keras / reference from the same turns.

Training is one hard-distillation step with a frozen CNN teacher on both
sides: the same conv net (`deit_keras.distill.teachers.build_small_cnn`, mirrored in
PyTorch below), so the teacher FLOPs are equal.

    python benchmarks/throughput.py [--models deit_tiny_distilled_patch16_224,...]
        [--repeats 5] [--quick] [--device cpu|gpu]

Writes `benchmarks/results/throughput.json` (`throughput_quick.json` with --quick).
"""

import torch_env  # noqa: F401, I001 (first: the torchvision stub, see torch_env.py)
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's deit_keras; its timing and host modules load no TF

from deit_keras.inference import host, timing  # noqa: E402
from deit_keras.models.flops import vit_flops  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
MARK = "@@"  # worker replies on stdout start with this
TEACHER_WIDTH = 16
MLP_RATIO = 4  # every DeiT variant


# === Architecture arithmetic ===


def deit_flops(variant, num_classes=1000):
    """Forward FLOPs per image (2 per multiply-add) of the matrix products."""
    return vit_flops(
        image_size=variant.image_size,
        patch_size=variant.patch_size,
        in_channels=3,
        embed_dim=variant.embed_dim,
        depth=variant.depth,
        mlp_ratio=MLP_RATIO,
        prefix_tokens=2 if variant.distilled else 1,
        num_classes=num_classes,
    )


def teacher_flops(image_size, width=TEACHER_WIDTH, num_classes=1000):
    """Forward FLOPs per image of `build_small_cnn` (convs and head)."""
    macs, size, channels = 0, image_size, 3
    for stage in range(3):
        out = width * 2**stage
        for _ in range(2):
            macs += size * size * 9 * channels * out
            channels = out
        if stage < 2:
            size //= 2
    return 2 * (macs + channels * num_classes)


def machine():
    """CPU model, flags and the fp32 peak with how it was derived."""
    info = {"platform": platform.platform(), "cpu_count": os.cpu_count()}
    fields = host.cpuinfo_fields()
    flags = set(fields.get("flags", "").split())
    mhz = float(fields.get("cpu MHz", "0") or 0)
    vendor, family = fields.get("vendor_id", ""), int(fields.get("cpu family", "0") or 0)
    isa_bits = 512 if "avx512f" in flags else 256 if "avx2" in flags else 128
    # Zen 4 (AMD family 0x19) runs 512-bit ops as two 256-bit halves.
    datapath = 256 if (vendor == "AuthenticAMD" and isa_bits == 512 and family <= 25) else isa_bits
    lanes, fma_units = datapath // 32, 2
    peak = os.cpu_count() * mhz * 1e6 * lanes * 2 * fma_units
    info.update(
        cpu=fields.get("model name", platform.processor()),
        features=host.cpu_info()["features"],
        vendor=vendor,
        family=family,
        mhz=mhz,
        simd_flags=sorted(f for f in flags if f.startswith(("avx", "fma", "amx"))),
        peak_fp32_flops=peak,
        peak_derivation=(
            f"{os.cpu_count()} cores x {mhz:.0f} MHz (/proc/cpuinfo) x {lanes} fp32 lanes "
            f"({datapath}-bit datapath; ISA width {isa_bits}) x 2 FLOP/FMA x {fma_units} FMA units"
            f" = {peak / 1e9:.0f} GFLOP/s"
        ),
    )
    return info


# === Workers (one process per measured case) ===


def reply(**kwargs):
    print(MARK + json.dumps(kwargs), flush=True)


def torch_teacher(torch, num_classes, width=TEACHER_WIDTH):
    """The PyTorch twin of `deit_keras.distill.teachers.build_small_cnn`."""
    nn, layers, channels = torch.nn, [], 3
    for stage in range(3):
        for _ in range(2):
            out = width * 2**stage
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),
            ]
            channels = out
        if stage < 2:
            layers.append(nn.MaxPool2d(2))
    layers += [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(channels, num_classes),
    ]
    return nn.Sequential(*layers).eval()


def name_variant(name):
    """Variant fields from a timm name, without importing deit_keras (and so TensorFlow)."""
    parts = name.split("_")  # deit_{tiny,small,base}[_distilled]_patch16_224
    embed_dim, num_heads = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}[parts[1]]
    return types.SimpleNamespace(
        embed_dim=embed_dim,
        num_heads=num_heads,
        distilled="distilled" in parts,
        depth=12,
        patch_size=int(parts[-2].removeprefix("patch")),
        image_size=int(parts[-1]),
    )


def hf_model(name, attn="eager"):
    """The Hugging Face model of the variant, randomly initialised (never downloaded)."""
    import transformers

    v = name_variant(name)
    kwargs = {
        "hidden_size": v.embed_dim,
        "num_hidden_layers": v.depth,
        "num_attention_heads": v.num_heads,
        "intermediate_size": MLP_RATIO * v.embed_dim,
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "num_labels": 1000,
        "layer_norm_eps": 1e-6,
        "attn_implementation": attn,
    }
    if v.distilled:
        return transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**kwargs))
    return transformers.ViTForImageClassification(transformers.ViTConfig(**kwargs))


def torch_worker(args, task, name, batch, attn):
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    torch.set_num_threads(os.cpu_count())
    model = hf_model(name, attn)
    model.load_state_dict(load_file(args.weights))
    size = model.config.image_size
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.normal(size=(batch, 3, size, size)).astype("float32"))
    if task == "infer":
        model.eval()

        def step():
            with torch.inference_mode():
                model(images).logits.numpy()
    else:
        model.train()
        teacher = torch_teacher(torch, 1000)
        labels = torch.from_numpy(rng.integers(0, 1000, batch))
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)

        def step():
            with torch.no_grad():
                teacher_labels = teacher(images).argmax(-1)
            out = model(images)
            loss = 0.5 * F.cross_entropy(out.cls_logits, labels) + 0.5 * F.cross_entropy(
                out.distillation_logits, teacher_labels
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()

    return step


def keras_worker(args, task, name, batch, _=None):
    import tensorflow as tf

    if args.keras_threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.keras_threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    from deit_keras.deploy.checkpoints import load_checkpoint
    from deit_keras.distill.teachers import build_small_cnn
    from deit_keras.inference.predict import predict_function
    from deit_keras.training.optim import create_optimizer

    model = load_checkpoint(args.weights, name)
    size = model.image_size
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(batch, size, size, 3)).astype("float32"))
    if task == "infer":
        path = args.keras_infer
        if path in ("xla", "function"):
            predict = predict_function(model, jit_compile=path == "xla")
            return lambda: predict(images).numpy()
        if path == "predict_on_batch":
            return lambda: model.predict_on_batch(images)
        return lambda: model(images, training=False).numpy()
    labels = tf.constant(np.eye(1000, dtype="float32")[rng.integers(0, 1000, batch)])
    teacher = build_small_cnn(1000, size, width=TEACHER_WIDTH)
    model.compile(
        optimizer=create_optimizer(
            base_lr=5e-4, global_batch_size=batch, steps_per_epoch=100, epochs=1, warmup_epochs=0
        ),
        teacher=teacher,
        distillation="hard",
        jit_compile=args.keras_train_jit,
    )
    keras.utils.set_random_seed(0)
    return lambda: model.train_on_batch(images, labels)


def keras_hub_worker(args, task, name, batch, _=None):
    """keras-hub's `DeiTBackbone` (random weights, backbone only, no heads)."""
    import keras_hub
    import tensorflow as tf

    from deit_keras import get_variant
    from deit_keras.inference.predict import predict_function

    v = get_variant(name)
    backbone = keras_hub.models.DeiTBackbone(
        image_shape=(v.image_size, v.image_size, 3),
        patch_size=v.patch_size,
        num_layers=v.depth,
        num_heads=v.num_heads,
        hidden_dim=v.embed_dim,
        intermediate_dim=MLP_RATIO * v.embed_dim,
    )
    images = tf.constant(
        np.random.default_rng(0)
        .normal(size=(batch, v.image_size, v.image_size, 3))
        .astype("float32")
    )
    predict = predict_function(backbone, jit_compile=args.keras_infer == "xla")
    return lambda: predict(images).numpy()


def worker(args):
    side, task, name, batch, *attn = args.worker.split(":")
    build = {"torch": torch_worker, "keras": keras_worker, "keras_hub": keras_hub_worker}[side]
    import_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step = build(args, task, name, int(batch), *attn)
    timing.time_calls(step, args.warmup if task == "infer" else min(args.warmup, 2))
    reply(ready=True)
    for line in sys.stdin:
        command = line.split()
        if command[0] == "run":
            reply(seconds=float(np.mean(timing.time_calls(step, int(command[1])))))
        else:
            break
    reply(
        max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        import_rss_mb=import_rss,
        vm_hwm_mb=_vm_hwm_mb(),
    )


def _vm_hwm_mb():
    """This process's own peak RSS (`VmHWM`), a cross-check of `ru_maxrss`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


# === Driver ===


class WorkerProcess:
    """A worker subprocess that answers on stdout with `MARK`-prefixed JSON lines."""

    def __init__(self, command, spec, env):
        self.spec = spec
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )

    def read(self):
        for line in self.process.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
        raise RuntimeError(f"worker {self.spec} exited with {self.process.wait()}")

    def send(self, text):
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def close(self):
        self.send("quit")
        rss = self.read()
        self.process.stdin.close()
        self.process.wait()
        return rss


class Worker(WorkerProcess):
    def __init__(self, args, spec, python=sys.executable):
        command = [
            python,
            os.path.abspath(__file__),
            "--worker",
            spec,
            "--weights",
            args.weights,
            "--warmup",
            str(args.warmup),
            "--keras_infer",
            args.keras_infer,
            "--keras_threads",
            str(args.keras_threads),
        ]
        if not args.keras_train_jit:
            command.append("--no_keras_train_jit")
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if args.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        super().__init__(command, spec, env)


def interleaved(specs, args, iterations, pythons=None):
    """Times the workers in turns; `{spec: {"seconds": [...], "max_rss_mb": x}}`."""
    workers = [Worker(args, spec, (pythons or {}).get(spec, sys.executable)) for spec in specs]
    for w in workers:
        w.read()  # built and warmed up (each warms up alone: the other is still loading or idle)
    out = {spec: {"seconds": []} for spec in specs}
    for _ in range(args.repeats):
        for w in workers:
            w.send(f"run {iterations}")
            out[w.spec]["seconds"].append(w.read()["seconds"])
    for w in workers:
        out[w.spec].update(w.close())
    return out


def keras_hub_python(args):
    """An interpreter that imports keras_hub with this keras/tensorflow, or None."""
    for python in filter(None, [args.keras_hub_python, sys.executable]):
        probe = (
            "import keras, keras_hub, tensorflow as tf; "
            "print(keras.__version__, tf.__version__, keras_hub.__version__)"
        )
        result = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=False)
        if result.returncode == 0:
            return python, result.stdout.split()
    return None, None


def save_weights(name, path):
    """Writes the reference's random weights; replies with the variant's fields."""

    import torch
    from safetensors.torch import save_file

    from deit_keras import get_variant

    variant = dict(get_variant(name).config)  # a Variant's architecture fields
    if variant != {**variant, **vars(name_variant(name))}:
        raise ValueError(f"name_variant({name!r}) disagrees with get_variant: {variant}")
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in hf_model(name).state_dict().items()}, path)
    reply(**variant)


def run_model(args, name, info, hub_python, variant):
    """Rows of one model; the reference is the faster HF attention implementation."""
    fwd, teach = deit_flops(variant), teacher_flops(variant.image_size)
    attns = args.torch_attn.split(",")
    rows = []
    cases = [
        ("infer", 1, args.latency_iters),
        ("infer", args.batch, 1),
        ("train", args.train_batch, 1),
    ]
    for task, batch, iterations in cases:
        keras_spec = f"keras:{task}:{name}:{batch}"
        # Training is slow: only the first (HF default) attention there.
        torch_specs = [
            f"torch:{task}:{name}:{batch}:{attn}"
            for attn in (attns if task == "infer" else attns[:1])
        ]
        specs, pythons = [keras_spec] + torch_specs, {}
        if task == "infer" and batch > 1 and hub_python:
            specs.append(f"keras_hub:{task}:{name}:{batch}")
            pythons[specs[-1]] = hub_python
        print(f"  {name} {task} batch {batch} ...", flush=True)
        timed = interleaved(specs, args, iterations, pythons)
        flops = fwd if task == "infer" else 3 * fwd + teach
        keras_s = np.array(timed[keras_spec]["seconds"])
        best = min(torch_specs, key=lambda spec: np.median(timed[spec]["seconds"]))
        torch_s = np.array(timed[best]["seconds"])
        row = {
            "model": name,
            "task": task,
            "batch": batch,
            "flops_per_image": flops,
            "keras": summary(keras_s, batch, flops, info, timed[keras_spec]),
            "reference": summary(torch_s, batch, flops, info, timed[best]),
            "reference_attn": best.rsplit(":", 1)[1],
            "reference_all": {
                spec.rsplit(":", 1)[1]: summary(
                    timed[spec]["seconds"], batch, flops, info, timed[spec]
                )
                for spec in torch_specs
            },
            # Per turn, then the median: both sides saw the same load in a turn.
            "ratio_images_per_s": float(np.median(torch_s / keras_s)),
        }
        if specs[-1].startswith("keras_hub"):
            hub_s = np.array(timed[specs[-1]]["seconds"])
            row["keras_hub"] = summary(
                hub_s, batch, fwd - 2 * variant.embed_dim * 1000, info, timed[specs[-1]]
            )
            row["ratio_vs_keras_hub"] = float(np.median(hub_s / keras_s))
        rows.append(row)
    return rows


def summary(seconds, batch, flops, info, worker):
    median = float(np.median(seconds))
    return {
        "median_ms": 1e3 * median,
        "images_per_s": batch / median,
        "fraction_of_peak": batch * flops / median / info["peak_fp32_flops"],
        "seconds": [float(x) for x in seconds],
        "max_rss_mb": worker["max_rss_mb"],
        "rss_before_framework_import_mb": worker["import_rss_mb"],
        "vm_hwm_mb": worker["vm_hwm_mb"],
    }


def pipeline_images_per_s():
    path = os.path.join(RESULTS, "input_pipeline.json")
    if not os.path.exists(path):
        return None, None
    with open(path) as f:
        report = json.load(f)["images_per_second"]
    key = "recipe_on, RandAugment per image (default)"
    return key, report.get(key)


def print_table(rows, info, pipeline):
    print(f"\nfp32 peak: {info['peak_derivation']}")
    head = (
        f"{'model':32s} {'task':5s} {'B':>3s} {'keras img/s':>11s} {'ref img/s':>10s} "
        f"{'ratio':>6s} {'keras ms':>9s} {'ref ms':>9s} {'%peak k/r':>10s} "
        f"{'RSS MB k/r':>12s} ref"
    )
    print(head + "\n" + "-" * len(head))
    for r in rows:
        k, ref = r["keras"], r["reference"]
        print(
            f"{r['model']:32s} {r['task']:5s} {r['batch']:3d} {k['images_per_s']:11.1f} "
            f"{ref['images_per_s']:10.1f} {r['ratio_images_per_s']:6.2f} {k['median_ms']:9.1f} "
            f"{ref['median_ms']:9.1f} {100 * k['fraction_of_peak']:4.0f}"
            f"/{100 * ref['fraction_of_peak']:<4.0f} "
            f"{k['max_rss_mb']:5.0f}/{ref['max_rss_mb']:<5.0f} {r['reference_attn']}"
        )
        if "keras_hub" in r:
            print(
                f"{'  keras-hub DeiTBackbone (no head)':32s} {'':5s} {'':3s} "
                f"{r['keras_hub']['images_per_s']:11.1f}  deit_keras / keras-hub = "
                f"{r['ratio_vs_keras_hub']:.2f}, RSS {r['keras_hub']['max_rss_mb']:.0f} MB"
            )
    print(
        "(ratio = median over turns of reference time / keras time; RSS = ru_maxrss of "
        "each case's own worker process; ref = faster HF attention implementation)"
    )
    key, rate = pipeline
    for r in rows:
        if r["task"] == "train" and rate:
            demand = r["keras"]["images_per_s"]
            print(
                f"tf.data pipeline ({key}, benchmarks/input_pipeline.py): {rate:.1f} img/s vs "
                f"{r['model']} train-step demand {demand:.1f} img/s -> {rate / demand:.1f}x"
            )


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default="deit_tiny_distilled_patch16_224,deit_small_distilled_patch16_224"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--quick", action="store_true", help="DeiT-Ti only, 3 repeats, small batches"
    )
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--train_batch", type=int, default=32)
    parser.add_argument("--latency_iters", type=int, default=10, help="batch-1 calls per turn")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--keras_infer", default="xla", choices=["xla", "function", "eager", "predict_on_batch"]
    )
    parser.add_argument("--no_keras_train_jit", dest="keras_train_jit", action="store_false")
    parser.add_argument("--keras_threads", type=int, default=0, help="0: TensorFlow's default")
    parser.add_argument(
        "--torch_attn",
        default="sdpa,eager",
        help="HF attention implementations timed as the reference (the faster "
        "counts); the first one (HF's default) alone for training",
    )
    parser.add_argument(
        "--keras_hub_python",
        default=None,
        help="python with keras_hub installed (default: this one, if it has it)",
    )
    parser.add_argument("--output", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--save_weights", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main():
    args = parse()
    if args.worker:
        return worker(args)
    if args.save_weights:
        return save_weights(args.save_weights, args.weights)
    if args.device == "gpu":
        sys.exit(
            "--device=gpu: this benchmark's reference and figures are CPU-only here "
            "(no GPU on this machine); run on a GPU host to extend it."
        )
    if args.quick:
        args.models = args.models.split(",")[0]
        args.repeats, args.batch, args.train_batch = min(args.repeats, 3), 8, 8
        args.latency_iters, args.warmup = 3, 2
    info = machine()
    info["load_average_before"] = os.getloadavg()
    hub_python, hub_versions = keras_hub_python(args)
    print(info["cpu"], "|", info["peak_derivation"], flush=True)
    print("keras-hub:", hub_versions or "not importable with these keras/tensorflow; skipped")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            args.weights = os.path.join(tmp, f"{name}.safetensors")
            # In a child: the driver stays small, since a worker's ru_maxrss
            # starts from its parent's (exec after vfork folds it in).
            env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
            saved = subprocess.run(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--save_weights",
                    name,
                    "--weights",
                    args.weights,
                ],
                check=True,
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
            ).stdout
            fields = json.loads(saved.split(MARK)[-1])
            rows += run_model(args, name, info, hub_python, types.SimpleNamespace(**fields))
    info["load_average_after"] = os.getloadavg()
    pipeline = pipeline_images_per_s()
    print_table(rows, info, pipeline)
    import tensorflow as tf
    import torch
    import transformers

    report = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "machine": info,
        "versions": {
            "tensorflow": tf.__version__,
            "keras": __import__("keras").__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "keras_hub": hub_versions and hub_versions[2],
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "weights")},
        "reference": (
            f"HF transformers {'DeiTForImageClassificationWithTeacher'} "
            f"(attn_implementation in {args.torch_attn}, the faster per case), fp32, CPU, "
            "torch.inference_mode / AdamW step"
        ),
        "teacher": (
            f"build_small_cnn(width={TEACHER_WIDTH}) on both sides (Keras and a PyTorch "
            "twin), frozen, random weights"
        ),
        "pipeline": {
            "case": pipeline[0],
            "images_per_s": pipeline[1],
            "source": "benchmarks/results/input_pipeline.json",
        },
        "rows": rows,
    }
    os.makedirs(RESULTS, exist_ok=True)
    path = args.output or os.path.join(
        RESULTS, "throughput_quick.json" if args.quick else "throughput.json"
    )
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    main()
