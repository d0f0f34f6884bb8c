"""Trains a DeiT student, with a frozen CNN teacher, from absl flags.

    python -m deit_keras.train --flagfile=experiments/digits.cfg
    python -m deit_keras.train --flagfile=experiments/deit_t.cfg --data_dir=/data/tfds

The flags are generated from `deit_keras.training.config.TrainConfig` (and
its `AugmentConfig`): every default is the paper's recipe (DeiT `main.py`);
`experiments/*.cfg` hold complete runs.
"""

import json
import os
import shlex
import sys

from deit_keras import cli
from deit_keras.cli import launch
from deit_keras.cli.config_flags import config_from_flags, define_config_flags
from deit_keras.io import run_lock
from deit_keras.training.config import TrainConfig

define_config_flags(TrainConfig)


def main(argv: list[str]) -> None:
    cli.check_no_arguments(argv)
    config = config_from_flags(TrainConfig)
    config.validate()
    # TensorFlow starts once the flags and their values are accepted: `--help` and a bad
    # flag answer before it (the config, its flags and `validate` need neither Keras nor
    # TensorFlow); the path checks may load it (the SavedModel's layout).
    launch.quiet_tensorflow_start(sys.argv[1:])
    config.check_paths()
    if config.strategy != "multi_worker":  # workers share the chief's model_dir
        run_lock.check_free(config.model_dir)  # at once, before the strategy starts
    from deit_keras.training.runner import run_training

    # flags.txt is written once the run is accepted: a refused one keeps the directory's own.
    try:
        results = run_training(config, flags_text=cli.command_flags_text())
    except KeyboardInterrupt as interrupted:
        resume = f"rerun the same command to go on from the last backup in {config.model_dir}"
        raise KeyboardInterrupt(resume if config.resume else "") from interrupted
    print(json.dumps(results, indent=1))
    print(comparison(results, config, ablate_command(sys.argv[1:])))


def comparison(results: dict, config: TrainConfig, ablation: str) -> str:
    """The closing lines: teacher vs student top-1 by head, wall time, and for a distilled
    run the ablation command (an undistilled run's --teacher is the default, the paper's
    ImageNet teacher, which its data may not suit)."""
    lines = ["top-1 on the evaluation split (fractions, as in the Keras logs and results.json):"]
    if "teacher_top1" in results:
        # The teacher used: `--teacher_base` says what a missing file would be trained from,
        # not what an existing one holds.
        teacher = os.path.basename(config.teacher)
        lines.append(f"  teacher ({teacher}): {results['teacher_top1']:.4f}")
    heads = f"cls head {results['cls_top1']:.4f}"  # a model without a dist token
    if "dist_top1" in results:
        heads = f"cls+dist {results['top1']:.4f}, {heads}, dist head {results['dist_top1']:.4f}"
    lines.append(
        f"  student ({results['model']}, distillation {config.distillation_type}"
        f"{' + features' if config.feature_distillation else ''}): {heads}"
    )
    chief = results.get("chief", True)  # a multi-worker run's other workers write nothing
    lines.append(
        f"{results['wall_s']:.0f} s in all (training the teacher, if this run did, included); "
        f"{'saved' if chief else 'the chief worker saves'} {results['saved_model']}"
    )
    if config.distillation_type != "none" and chief:  # else its teacher may not suit the data
        lines.append(f"With and without distillation over 3 seeds (DeiT Table 3): {ablation}")
    return "\n".join(lines)


# A run's own flags, which the ablation sets per row or refuses (`--output`).
_RUN_ONLY = ("model_dir", "output", "output_dir", "distillation", "distillation_type")
_RUN_ONLY += ("seeds", "rows")


def ablate_command(argv: list[str]) -> str:
    """This run's flags as a `deit_keras.ablate` command (own output directory, 3 seeds)."""
    dropped = {
        i for start, stop in cli.value_flag_spans(argv, _RUN_ONLY) for i in range(start, stop)
    }
    kept = [arg for index, arg in enumerate(argv) if index not in dropped]
    return shlex.join(
        ["python", "-m", "deit_keras.ablate", *kept, "--seeds=3", "--output_dir=runs/ablation"]
    )


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
