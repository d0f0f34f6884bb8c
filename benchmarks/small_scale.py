"""Time per epoch of the digits student: our training CLI vs a plain PyTorch loop, interleaved.

Ours is the real path: `python -m deit_keras.train --flagfile=experiments/digits.cfg`
(data pipeline, `fit` with validation and every callback of the runner), run for
`--epochs` epochs; its epoch times are the wall-clock gaps between the epoch
summaries its TensorBoard callback writes (`model_dir/tensorboard/train`), so the
first epoch (tracing, XLA compilation) is left out and each later one includes
validation, backups, checkpoints and the TensorBoard summaries.

The reference is a plain PyTorch loop over the same model, batch and data:
Hugging Face `DeiTForImageClassificationWithTeacher` with random weights at the
flagfile's size (blocks, width, heads, patch, image size; 10 classes; SDPA
attention), `torch.optim.AdamW` (lr and weight decay of the flagfile, timm's no-decay
groups, warmup-cosine per step), label smoothing 0.1, `torch.set_num_threads` = cores
(or `--threads`, which also sets TensorFlow's intra-op threads); each epoch one
shuffled pass over the 1,437 digits training images in batches of 32 (remainder
dropped, as ours) and one no-grad pass over the 360 validation images. It gets
its batches for free: the images are resized to the model's size (the eval
transform) and normalised once, up front, without augmentation, while ours runs
the flagfile's augmentation every step. With `hard`, both sides run a frozen
small CNN teacher of the same architecture (ours
`distill.teachers.build_small_cnn(10, size)`, its PyTorch twin), random weights,
in eval mode, on every training batch, and add 0.5 CE(dist head, teacher argmax).
With `feature`, hard distillation plus feature distillation at its defaults
(`--feature_distillation`; PyTorch: `torch_feature_distillation`, the same term).

Two measures per epoch: wall time, and CPU time (user + system of every thread:
ours sampled from `/proc/<pid>/stat` every 20 ms and interpolated at the epoch
ends, PyTorch's from `getrusage`). On a box shared with other jobs the wall time
mostly measures how each runtime copes with waiting for cores (PyTorch's OpenMP
at 2 threads collapses: 0.5-0.8 CPU s per step, spinning); CPU time is the work
done, the load-robust figure.

The two sides run one after the other, alternately (ours none, PyTorch none, ours
hard, PyTorch hard, repeated `--repeats` times), each in a fresh process; the ratio
of a turn is ours / PyTorch mean epoch time of the two adjacent runs, and the table
gives the median over turns (< 1: ours faster). Writes
`benchmarks/results/small_scale.json`.

With `--side_by_side N` each side runs N copies at once, each pinned to its share of the
cores (the ablation's `--parallel_seeds`); an epoch then counts a copy's epoch time / N.

    python benchmarks/small_scale.py [--epochs 11] [--repeats 3] [--types none,hard,feature]
        [--threads N] [--side_by_side N] [--flagfile experiments/digits.cfg]
        [--extra_flags '--jit_compile=false']
"""

import torch_env  # noqa: F401, I001 (first: the torchvision stub, see torch_env.py)
import argparse
import concurrent.futures
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput  # noqa: E402  (a sibling script: the PyTorch twin of the CNN teacher)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
FLAGFILE = os.path.join(ROOT, "experiments", "digits.cfg")
MARK = "@@small_scale@@"


def read_flagfile(path=FLAGFILE):
    """`{name: value}` of a flagfile's `--name=value` lines (strings)."""
    values = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line.startswith("--") and "=" in line:
                name, value = line[2:].split("=", 1)
                values[name] = value
    return values


# === Preparation (a TensorFlow process) ===


def prepare(directory, flagfile=FLAGFILE):
    """Writes the digits arrays (`digits.npz`) and a random-weight teacher (`teacher.keras`)."""
    import keras

    from deit_keras.data import in_memory
    from deit_keras.data.preprocessing import resize_and_center_crop
    from deit_keras.distill.teachers import build_small_cnn

    flags = read_flagfile(flagfile)
    size, crop_pct = int(flags["image_size"]), float(flags.get("crop_pct", 0.875))
    train_x, train_y = in_memory.decoded_split("digits", None, "train")
    eval_x, eval_y = in_memory.decoded_split("digits", None, "eval")
    # The model's eval transform (resize + centre crop): PyTorch gets these pixels.
    train_x = resize_and_center_crop(train_x, size, crop_pct).numpy().astype(np.uint8)
    eval_x = resize_and_center_crop(eval_x, size, crop_pct).numpy().astype(np.uint8)
    np.savez(
        os.path.join(directory, "digits.npz"),
        train_x=train_x,
        train_y=train_y,
        eval_x=eval_x,
        eval_y=eval_y,
    )
    keras.utils.set_random_seed(0)
    build_small_cnn(10, size).save(os.path.join(directory, "teacher.keras"))


# === Ours: the train CLI ===


def epoch_end_times(model_dir):
    """Wall times of the epoch summaries the TensorBoard callback wrote, in epoch order."""
    from tensorboard.backend.event_processing import event_accumulator

    times = {}
    for path in glob.glob(os.path.join(model_dir, "tensorboard", "train", "events.*")):
        accumulator = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
        accumulator.Reload()
        if "epoch_loss" not in accumulator.Tags()["tensors"]:
            continue  # another writer's file (e.g. the input images)
        for event in accumulator.Tensors("epoch_loss"):
            times[event.step] = event.wall_time
    return [times[step] for step in sorted(times)]


# A timed type's train flags: feature = hard + feature distillation (its defaults: the
# first, middle and last block against the small CNN's three stage ends, weight 2.5).
OURS_FLAGS = {
    "none": ["--distillation_type=none", "--nofeature_distillation"],
    "hard": ["--distillation_type=hard", "--nofeature_distillation"],
    "feature": ["--distillation_type=hard", "--feature_distillation"],
}
FEATURE_WEIGHT = 2.5


def run_ours(args, distillation, directory, turn, index=0, cores=None):
    model_dir = os.path.join(directory, f"ours_{distillation}_{turn}_{index}")
    command = [
        *pinned(cores),
        sys.executable,
        "-m",
        "deit_keras.train",
        f"--flagfile={args.flagfile}",
        f"--epochs={args.epochs}",
        *OURS_FLAGS[distillation],
        f"--teacher={os.path.join(directory, 'teacher.keras')}",
        "--teacher_epochs=0",
        f"--model_dir={model_dir}",
        f"--output={model_dir}.keras",
        "--export_savedmodel=false",
        *args.extra_flags,
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if args.threads:
        env.update(TF_NUM_INTRAOP_THREADS=str(args.threads), TF_NUM_INTEROP_THREADS="1")
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=stderr, text=True, env=env, cwd=ROOT
        )
        samples = []  # (wall time, CPU seconds of the process so far), every 20 ms
        while process.poll() is None:
            samples.append((time.time(), process_cpu_s(process.pid)))
            time.sleep(0.02)
        if process.returncode:
            stderr.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed:\n{stderr.read()[-3000:]}")
    ends = epoch_end_times(model_dir)
    if len(ends) != args.epochs:
        raise RuntimeError(f"expected {args.epochs} epoch summaries in {model_dir}, got {ends}")
    wall, cpu = zip(*[s for s in samples if s[1] is not None], strict=True)
    cpu_at_ends = np.interp(ends, wall, cpu)
    return np.diff(ends).tolist(), np.diff(cpu_at_ends).tolist()  # epoch 1.. (0 compiles)


def side_by_side(args, run, *run_args):
    """Epoch wall and CPU seconds of `run(*run_args, index, cores)`; --side_by_side N: N at once.

    Each of the N runs is pinned to its share of the cores; an epoch's wall time is then a
    run's epoch time / N (N epochs every that many seconds: what an ablation's seeds side
    by side get), its CPU time a run's own.
    """
    if args.side_by_side == 1:
        return run(*run_args, 0, None)
    usable = sorted(os.sched_getaffinity(0))
    groups = [usable[index :: args.side_by_side] for index in range(args.side_by_side)]
    with concurrent.futures.ThreadPoolExecutor(args.side_by_side) as pool:
        starts = [pool.submit(run, *run_args, index, cores) for index, cores in enumerate(groups)]
        results = [start.result() for start in starts]
    walls = [wall / args.side_by_side for epochs, _ in results for wall in epochs]
    return walls, [cpu for _, epochs in results for cpu in epochs]


def pinned(cores):
    """A command prefix pinning it to `cores` (taskset execs: the pid stays the same)."""
    return ["taskset", "-c", ",".join(map(str, cores))] if cores else []


def process_cpu_s(pid):
    """User + system CPU seconds of all threads of `pid` (None once it has gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# === PyTorch reference (a process without TensorFlow) ===


def torch_worker(args):
    import math

    import torch
    import torch.nn.functional as F
    import transformers

    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    flags = read_flagfile(args.flagfile)
    size, batch = int(flags["image_size"]), int(flags["batch_size"])
    dim, smoothing = int(flags["embed_dim"]), float(flags["smoothing"])
    config = transformers.DeiTConfig(
        hidden_size=dim,
        num_hidden_layers=int(flags["depth"]),
        num_attention_heads=int(flags["num_heads"]),
        intermediate_size=4 * dim,
        image_size=size,
        patch_size=int(flags["patch_size"]),
        num_labels=10,
        layer_norm_eps=1e-6,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa",
    )
    model = transformers.DeiTForImageClassificationWithTeacher(config)
    data = np.load(os.path.join(args.directory, "digits.npz"))
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)

    def tensors(x):  # normalised once, NCHW
        normalised = (x.astype(np.float32) / 255.0 - mean) / std
        return torch.from_numpy(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2)))

    train_x, eval_x = tensors(data["train_x"]), tensors(data["eval_x"])
    train_y = torch.from_numpy(data["train_y"])
    distils = args.distillation in ("hard", "feature")
    teacher = throughput.torch_teacher(torch, 10) if distils else None
    features = torch_feature_distillation(torch, model, teacher, flags, size)
    if args.distillation != "feature":
        features = None
    no_decay = ("cls_token", "distillation_token", "position_embeddings")
    decay, plain = [], []
    named = list(model.named_parameters())
    if features is not None:
        named += [(f"adapter.{n}", p) for n, p in features.adapters.named_parameters()]
    for name, parameter in named:
        (plain if parameter.ndim <= 1 or name.endswith(no_decay) else decay).append(parameter)
    peak = float(flags["lr"]) * batch / 512
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": float(flags["weight_decay"])},
            {"params": plain, "weight_decay": 0.0},
        ],
        lr=peak,
    )
    steps = len(train_x) // batch
    total, warmup = args.epochs * steps, int(flags["warmup_epochs"]) * steps

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    ends, cpu = [], []
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_x))
        for step in range(steps):
            index = order[step * batch : (step + 1) * batch]
            images, labels = train_x[index], train_y[index]
            out = model(images, output_hidden_states=features is not None)
            cls_loss = F.cross_entropy(out.cls_logits, labels, label_smoothing=smoothing)
            teacher_maps = None
            if teacher is None:
                dist_target = labels
            else:
                with torch.no_grad():
                    if features is not None:
                        logits, teacher_maps = features.teacher(images)
                    else:
                        logits = teacher(images)
                    dist_target = logits.argmax(-1)
            dist_smoothing = smoothing if teacher is None else 0.0
            dist_loss = F.cross_entropy(
                out.distillation_logits, dist_target, label_smoothing=dist_smoothing
            )
            loss = 0.5 * cls_loss + 0.5 * dist_loss
            if teacher_maps is not None:
                loss = loss + FEATURE_WEIGHT * features.loss(out.hidden_states, teacher_maps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(eval_x), batch):
                model(eval_x[start : start + batch]).logits.argmax(-1)
        loss.item()
        ends.append(time.perf_counter())
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu.append(usage.ru_utime + usage.ru_stime)
    print(MARK + json.dumps([np.diff(ends).tolist(), np.diff(cpu).tolist()]), flush=True)


def torch_feature_distillation(torch, model, teacher, flags, size):
    """The PyTorch twin of `distill.feature_loss` for the digits student and small CNN.

    Student blocks first, middle and last (`default_blocks`); the teacher's three
    stage ends (the ReLU before each pooling, and the last); 1x1 conv adapters;
    both maps resized (bilinear, half-pixel centres) to the larger grid; summed MSE.
    """
    if teacher is None:
        return None
    import types

    nn, F = torch.nn, torch.nn.functional
    depth, dim = int(flags["depth"]), int(flags["embed_dim"])
    grid = size // int(flags["patch_size"])
    blocks = sorted({0, depth // 2, depth - 1})
    relus = [i for i, layer in enumerate(teacher) if isinstance(layer, nn.ReLU)]
    pools = [i for i, layer in enumerate(teacher) if isinstance(layer, nn.MaxPool2d)]
    ends = [i - 1 for i in pools] + [relus[-1]]
    channels = [teacher[i - 1].num_features for i in ends]  # the BatchNorm before each ReLU
    adapters = nn.ModuleList(nn.Conv2d(dim, c, 1) for c in channels)

    def teacher_outputs(images):
        maps, x = [], images
        for index, layer in enumerate(teacher):
            x = layer(x)
            if index in ends:
                maps.append(x)
        return x, maps

    def loss(hidden_states, teacher_maps):
        total = 0.0
        for adapter, block, target in zip(adapters, blocks, teacher_maps, strict=True):
            tokens = hidden_states[block + 1][:, 2:]  # after block `block`, patches only
            student = tokens.transpose(1, 2).reshape(-1, dim, grid, grid)
            student = adapter(student)
            side = max(grid, target.shape[-1])
            student = F.interpolate(student, size=(side, side), mode="bilinear")
            target = F.interpolate(target, size=(side, side), mode="bilinear")
            total = total + F.mse_loss(student, target)
        return total

    return types.SimpleNamespace(adapters=adapters, teacher=teacher_outputs, loss=loss)


def run_torch(args, distillation, directory, index=0, cores=None):  # index: unused
    command = [
        *pinned(cores),
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "torch",
        "--distillation",
        distillation,
        "--directory",
        directory,
        "--epochs",
        str(args.epochs),
        "--threads",
        str(args.threads),
        "--flagfile",
        args.flagfile,
    ]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    process = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if process.returncode:
        raise RuntimeError(f"PyTorch worker failed:\n{process.stderr[-3000:]}")
    line = next(line for line in process.stdout.splitlines() if line.startswith(MARK))
    return json.loads(line[len(MARK) :])


# === Driver ===


def load_average():
    return round(os.getloadavg()[0], 2)


def summarize(runs, types):
    rows = []
    for distillation in types:
        pairs = [run for run in runs if run["distillation"] == distillation]
        row = dict(distillation=distillation, turns=len(pairs))
        for kind, suffix in (("wall", "s"), ("cpu", "cpu_s")):
            ours = [np.mean(run[f"ours_{suffix}"]) for run in pairs]
            torch_ = [np.mean(run[f"torch_{suffix}"]) for run in pairs]
            ratios = [o / t for o, t in zip(ours, torch_, strict=True)]
            row[kind] = dict(
                ours_epoch_s=float(np.median(ours)),
                torch_epoch_s=float(np.median(torch_)),
                ratio_median=float(np.median(ratios)),
                ratio_min=float(min(ratios)),
                ratio_max=float(max(ratios)),
            )
        rows.append(row)
    return rows


def print_table(rows, steps):
    print(
        "| distillation | measure | ours s/epoch (ms/step) | PyTorch s/epoch (ms/step) "
        "| ours / PyTorch, median (min-max) |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        for kind in ("wall", "cpu"):
            r = row[kind]
            print(
                f"| {row['distillation']} | {kind} | {r['ours_epoch_s']:.2f} "
                f"({1000 * r['ours_epoch_s'] / steps:.0f}) | {r['torch_epoch_s']:.2f} "
                f"({1000 * r['torch_epoch_s'] / steps:.0f}) | {r['ratio_median']:.2f} "
                f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) |"
            )


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=11, help="Epochs per run (first dropped).")
    parser.add_argument("--repeats", type=int, default=3, help="Interleaved turns.")
    parser.add_argument("--types", default="none,hard", help="Types to time: none, hard, feature.")
    parser.add_argument(
        "--extra_flags",
        default="",
        help="Space-separated train flags added to ours (e.g. to A/B --jit_compile=false).",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="Compute threads of both sides (TF intra-op / torch.set_num_threads); 0 = cores.",
    )
    parser.add_argument(
        "--side_by_side",
        type=int,
        default=1,
        help="N runs of each side at once, each pinned to its share of the cores (an "
        "ablation's seeds side by side); an epoch's wall time is a run's / N.",
    )
    parser.add_argument("--flagfile", default=FLAGFILE, help="The run's flagfile (digits).")
    parser.add_argument("--output", default=os.path.join(RESULTS, "small_scale.json"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--distillation", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--directory", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.extra_flags = args.extra_flags.split()
    return args


def main():
    args = parse()
    if args.worker == "torch":
        return torch_worker(args)
    if args.epochs < 3:
        raise SystemExit("--epochs must be >= 3: the first epoch is dropped.")
    types = args.types.split(",")
    runs = []
    with tempfile.TemporaryDirectory() as directory:
        subprocess.run(
            [
                sys.executable,
                "-c",
                # The script's folder on the path: its sibling torch_env, as when run directly.
                f"import runpy, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
                f"runpy.run_path({__file__!r})['prepare']"
                f"({directory!r}, {args.flagfile!r})",
            ],
            check=True,
            cwd=ROOT,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
            capture_output=True,
        )
        for turn in range(args.repeats):
            for distillation in types:
                load_before = load_average()
                ours, ours_cpu = side_by_side(args, run_ours, args, distillation, directory, turn)
                torch_, torch_cpu = side_by_side(args, run_torch, args, distillation, directory)
                run = dict(
                    turn=turn,
                    distillation=distillation,
                    ours_s=ours,
                    torch_s=torch_,
                    ours_cpu_s=ours_cpu,
                    torch_cpu_s=torch_cpu,
                    load_average=[load_before, load_average()],
                )
                runs.append(run)
                print(
                    f"turn {turn} {distillation}: ours {np.mean(ours):.2f} s/epoch "
                    f"({np.mean(ours_cpu):.2f} CPU s), PyTorch {np.mean(torch_):.2f} s/epoch "
                    f"({np.mean(torch_cpu):.2f} CPU s), load {run['load_average']}",
                    flush=True,
                )
    flags = read_flagfile(args.flagfile)
    steps = 1437 // int(flags["batch_size"])
    rows = summarize(runs, types)
    print_table(rows, steps)
    import torch
    import transformers

    from deit_keras.inference import host

    report = dict(
        date=time.strftime("%Y-%m-%d"),
        cpu=host.cpu_info(),
        cores=os.cpu_count(),
        command=" ".join(["python", "benchmarks/small_scale.py", *sys.argv[1:]]),
        flagfile=flags,
        threads=args.threads or os.cpu_count(),
        side_by_side=args.side_by_side,
        steps_per_epoch=steps,
        torch=torch.__version__,
        transformers=transformers.__version__,
        rows=rows,
        runs=runs,
    )
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
