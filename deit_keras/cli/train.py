"""Trains a DeiT student, with a frozen CNN teacher, from absl flags.

    python -m deit_keras.train --flagfile=experiments/digits.cfg
    python -m deit_keras.train --flagfile=experiments/deit_t.cfg --data_dir=/data/tfds

The flags are generated from `deit_keras.training.config.TrainConfig` (and
its `AugmentConfig`): every default is the paper's recipe (DeiT `main.py`);
`experiments/*.cfg` hold complete runs.
"""

import json
import os

from absl import flags

from deit_keras import cli
from deit_keras.cli.config_flags import config_from_flags, define_config_flags
from deit_keras.io import run_lock
from deit_keras.io.atomic import write_text_atomic
from deit_keras.training.config import TrainConfig
from deit_keras.training.runner import run_training

define_config_flags(TrainConfig)


def main(argv: list[str]) -> None:
    cli.check_no_arguments(argv)
    config = config_from_flags(TrainConfig)
    config.validate()
    if config.strategy != "multi_worker":  # workers share the chief's model_dir
        run_lock.check_free(config.model_dir)  # before flags.txt: a live run keeps its own
    os.makedirs(config.model_dir, exist_ok=True)
    write_text_atomic(os.path.join(config.model_dir, "flags.txt"), flags.FLAGS.flags_into_string())
    results = run_training(config)
    print(json.dumps(results, indent=1))
    summary = f"student top-1 {results['top1']:.2f}%"
    if "teacher_top1" in results:
        summary += f", teacher top-1 {results['teacher_top1']:.2f}%"
    print(f"{summary}; {results['wall_s']:.0f} s; saved {results['saved_model']}")


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
