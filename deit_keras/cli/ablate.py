"""The DeiT paper's distillation ablation (Table 3) in miniature.

    python -m deit_keras.ablate --flagfile=experiments/digits.cfg --output_dir=runs/ablation
    deit-ablate --flagfile=experiments/digits.cfg --seeds=3 --rows=none,hard,dist_hard \\
        --output_dir=runs/ablation

Takes every train flag (`deit_keras.cli.train`; `--output_dir` is `--model_dir`;
`--model` gives the architecture, each row takes it with or without dist token)
plus `--seeds` and `--rows` (`training.ablation_rows.ROWS`): none, soft, hard (DeiT
without dist token: labels only, then soft / hard distillation through the class
token), dist_hard (DeiT⚗, hard distillation through the dist token; read by class
head, dist head and both) and dist_labels (DeiT⚗ without teacher, both heads on
labels: not a paper row) and feature (dist_hard plus feature distillation, Li et al.
ECCV 2022: not a paper row). For each seed (`--seed`, `--seed`+1, ...) the teacher
is trained once into `output_dir/seed_<s>/teacher.keras` when `--teacher_epochs`
> 0 and `--teacher` names a .keras file (otherwise the given teacher serves every
seed), then each row's student in `output_dir/seed_<s>/<row>/`
(`training.runner.run_training`). Writes `ablation.md` (the table: teacher top-1,
each row's top-1 per head, mean ± std over seeds, mean wall time per run),
`ablation.json` (every run's numbers and per-epoch validation top-1, plus the
summary) and `learning_curves.png` (mean ± std bands over seeds). Rerunning the
same command skips finished runs. Unlike train, no SavedModel is exported unless
`--export_savedmodel`, and there is no one final model: a flagfile's `--output` is
not used (each row's is its `student.keras`), and `--output` given here is refused.

With `--train_fractions=0.1,0.25,0.5,1.0` the ablation runs once per fraction of
the training split (a class-balanced, seeded subset; teacher and students train on
it) into `output_dir/fraction_<f>/`, then writes `data_efficiency.md`, `.json` and
`.png`: each row's top-1 and the teacher's against the number of training images
(`training.data_efficiency`).
"""

import os
import shlex
import sys
import time

from absl import flags

from deit_keras import cli
from deit_keras.cli import launch, parallel_seeds
from deit_keras.cli.config_flags import config_from_flags, define_config_flags
from deit_keras.io import run_lock
from deit_keras.io.atomic import write_text_atomic
from deit_keras.schema import POSITIVE
from deit_keras.training.ablation_rows import DEFAULT_ROWS, ROWS, check_arguments
from deit_keras.training.config import TrainConfig

define_config_flags(TrainConfig)
flags.FLAGS.set_default("export_savedmodel", False)
flags.FLAGS["output"].help = (
    "Not taken here: refused on the command line, unused from a flagfile (each row saves "
    "its own student.keras)."
)

_SEEDS = flags.DEFINE_integer("seeds", 3, "Number of seeds: --seed, --seed + 1, ...")
_ROWS = flags.DEFINE_list(
    "rows",
    list(DEFAULT_ROWS),
    f"Rows of the table to train: {', '.join(row.name for row in ROWS)} "
    "(default: the paper's Table 3).",
)

_TRAIN_FRACTIONS = flags.DEFINE_list(
    "train_fractions",
    None,
    "Fractions of the training split, e.g. 0.1,0.25,0.5,1.0: the ablation at each, and "
    "top-1 against the number of training images (data_efficiency.md/.json/.png).",
)

_PARALLEL_SEEDS = flags.DEFINE_integer(
    "parallel_seeds",
    1,
    "Train up to this many seeds side by side, each in its own process on its share of "
    "the cores (log: <output_dir>/seed_<s>.log); for boxes with more cores than one run "
    "keeps busy (slower on 2 cores: docs/training.md).",
)

cli.check_range("seeds", POSITIVE)
_REPORT = flags.DEFINE_bool(
    "report",
    True,
    "Write the tables and plots once the runs are trained (--parallel_seeds' seed "
    "processes train only: the command reports all seeds when they are done).",
)
cli.check_range("parallel_seeds", POSITIVE)


def main(argv: list[str]) -> None:
    cli.check_no_arguments(argv)
    _check_no_output_given(sys.argv)
    started = time.time()
    rows = check_arguments(_SEEDS.value, _ROWS.value)
    launch.quiet_tensorflow_start(sys.argv[1:])  # once the flags are accepted
    from deit_keras.training.ablation import check_resumable, train_seeds
    from deit_keras.training.data_efficiency import check_fractions, fraction_configs

    # `--train_fractions=` (empty) is a list too: refused, not taken for "not given".
    fractions = None if _TRAIN_FRACTIONS.value is None else check_fractions(_TRAIN_FRACTIONS.value)
    if fractions and flags.FLAGS["train_fraction"].present:
        raise cli.UsageError(
            "--train_fraction is one point; --train_fractions gives every point: pass one of "
            f"them. Received: --train_fraction={flags.FLAGS.train_fraction}, "
            f"--train_fractions={','.join(map(str, _TRAIN_FRACTIONS.value))}"
        )
    config = config_from_flags(TrainConfig)
    config.validate()
    config.check_paths()
    points = fraction_configs(config, fractions) if fractions else [config]
    # Every row's settings and every earlier run's, before anything is written.
    for point in points:
        check_resumable(point, _SEEDS.value, rows, point.model_dir)
    if not _REPORT.value:
        for point in points:
            train_seeds(point, _SEEDS.value, rows, started)
        return
    # One command reports into output_dir at a time, nor beside a training run there.
    with run_lock.hold(config.model_dir):
        _train_and_report(config, rows, fractions, started)


def _check_no_output_given(argv: list[str]) -> None:
    """`--output` names one model; every row saves its own. A flagfile's `--output`
    (train's recipes set one) is not used; typed on the command line it is refused."""
    spans = cli.value_flag_spans(argv[1:], ("output",))
    if spans:
        start, stop = spans[0]
        raise cli.UsageError(
            "deit-ablate saves each row's model as <output_dir>/seed_<s>/<row>/"
            f"student.keras: leave --output out. Received: {' '.join(argv[1:][start:stop])}"
        )


def _train_and_report(config, rows, fractions, started) -> None:
    from deit_keras.training.ablation import run_ablation
    from deit_keras.training.data_efficiency import run_data_efficiency

    flags_path = os.path.join(config.model_dir, "flags.txt")
    write_text_atomic(flags_path, cli.command_flags_text())
    if _PARALLEL_SEEDS.value > 1 and _SEEDS.value > 1:
        seeds = [config.seed + index for index in range(_SEEDS.value)]
        parallel = _PARALLEL_SEEDS.value
        parallel_seeds.run_seeds("deit_keras.ablate", config.model_dir, seeds, parallel)
        write_text_atomic(flags_path, cli.command_flags_text())  # the seeds wrote theirs
    command = shlex.join(["python", "-m", "deit_keras.ablate", *sys.argv[1:]])
    if fractions:
        result = run_data_efficiency(
            config, fractions, _SEEDS.value, rows, command=command, started=started
        )
        with open(result["markdown"], encoding="utf-8") as handle:
            print(handle.read())
        print(f"wrote {result['markdown']}, {result['json']}, {result['plot']}")
        return
    report = run_ablation(config, _SEEDS.value, rows, command=command, started=started)
    with open(report["markdown"], encoding="utf-8") as handle:
        print(handle.read())
    print(f"wrote {report['markdown']}, {report['json']}, {report['curves']}")


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
