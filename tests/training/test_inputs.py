"""Where a resumed run's input picks up (`training.inputs`)."""

import json

import numpy as np
import pytest

from deit_keras.testing import digits_config, prepare_digits
from deit_keras.training import inputs


def _first_batch(stream):
    images, targets = next(iter(stream))
    return images.numpy(), targets.numpy()


def test_a_resumed_run_without_deterministic_draws_new_batches(tmp_path):
    """A rerun's pipeline was seeded as the first run's: resumed at epoch 2 it replayed
    epoch 0's order and augmentation."""
    prepare_digits(tmp_path)
    config = digits_config(tmp_path, deterministic=False, seed=3)
    # The pipeline in a fixed order (its own option), the run without --deterministic.
    data_kwargs = dict(
        image_size=16, data_dir=config.data_dir, seed=config.seed, deterministic=True
    )
    start = _first_batch(inputs.training_stream(config, data_kwargs, 0, 0))
    again = _first_batch(inputs.training_stream(config, data_kwargs, 0, 0))
    resumed = _first_batch(inputs.training_stream(config, data_kwargs, 2, 0))
    assert all(np.array_equal(a, b) for a, b in zip(start, again, strict=True))
    assert not np.array_equal(start[0], resumed[0])
    assert inputs.resumed_data_kwargs(data_kwargs, 2, 5) != inputs.resumed_data_kwargs(
        data_kwargs, 2, 6
    )
    assert inputs.resumed_data_kwargs({"seed": None}, 2, 0) == {"seed": None}


@pytest.mark.parametrize("deterministic", [False, True])
def test_a_run_resumed_mid_epoch_trains_only_the_rest_of_that_epoch(tmp_path, deterministic):
    """A backup at batch 5 of epoch 1 (22 steps an epoch): the resumed fit runs that epoch's
    17 remaining steps, then whole epochs. Without --deterministic the first phase is a
    repeated pipeline, so a phase of 22 steps would train 5 batches too many."""
    prepare_digits(tmp_path)
    config = digits_config(tmp_path, deterministic=deterministic, epochs=3, resume=True)
    backup = tmp_path / "run" / "backup"
    backup.mkdir(parents=True)
    (backup / "latest.json").write_text(json.dumps({"epoch": 1, "batch": 5, "dir": "x"}))
    data_kwargs = dict(image_size=16, data_dir=config.data_dir, seed=config.seed)
    phases = inputs.train_phases(config, data_kwargs, steps=22)
    assert [phase[1:] for phase in phases] == [(1, 2, 17), (2, 3, 22)]
