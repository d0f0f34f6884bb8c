"""run_training's checks before any work, and what a rerun in the same --model_dir finds."""

import dataclasses
import json
import logging
import os
import time

import keras
import numpy as np
import pytest
from PIL import Image

from deit_keras.errors import UserInputError
from deit_keras.testing import digits_config
from deit_keras.training import backup as backup_lib
from deit_keras.training import callbacks as callbacks_lib
from deit_keras.training.runner import run_training


def _tiny(tmp_path, **changes):
    """A 2-block, 32-dim DeiT at 16 px, patch 4: two steps of batch 32, no teacher."""
    settings = dict(
        distillation_type="none",
        teacher=None,
        image_size=16,
        patch_size=4,
        embed_dim=32,
        depth=2,
        num_heads=2,
        epochs=1,
        steps_per_epoch=2,
        jit_compile=False,
        summary_every=0,
    )
    return digits_config(tmp_path, **(settings | changes))


def _nothing_written(model_dir):
    """A refused run leaves no folder it made (it once left one holding its lock file)."""
    return not os.path.exists(model_dir)


@pytest.mark.parametrize(
    "changes, fragment",
    [
        (dict(batch_size=2048), "has 1437 images, fewer than one batch"),
        (dict(train_fraction=0.01), "images (train_fraction=0.01), fewer than one batch"),
    ],
)
def test_a_train_split_smaller_than_one_batch_is_refused_before_any_work(
    tmp_path, changes, fragment
):
    config = _tiny(tmp_path, **changes)
    with pytest.raises(UserInputError) as raised:
        run_training(config)
    message = str(raised.value)
    assert fragment in message and f"Received: batch_size={config.batch_size}" in message
    assert "\n" not in message
    assert _nothing_written(config.model_dir) and not os.path.exists(config.output)


def test_an_evaluation_split_without_images_is_refused_before_any_work(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("ant", "bee"):
        (tmp_path / "data" / "train" / name).mkdir(parents=True)
        (tmp_path / "data" / "val" / name).mkdir(parents=True)  # empty
        for index in range(16):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / "train" / name / f"{index}.png")
    config = _tiny(tmp_path, dataset=f"folder:{tmp_path / 'data'}", data_dir=None)
    with pytest.raises(UserInputError, match=r"evaluation split \(val\) of folder:.* no images"):
        run_training(config)
    assert _nothing_written(config.model_dir)


def test_an_evaluation_split_smaller_than_the_workers_is_refused(tmp_path):
    """Each worker validates its shard; an empty shard ended the run (`The dataset yielded
    no examples` on one worker, a lost peer on the other)."""
    import types

    from deit_keras.training.runner import check_splits

    config = _tiny(tmp_path, batch_size=4)
    info = types.SimpleNamespace(num_train_examples=8, num_eval_examples=1, eval_split="val")
    check_splits(config, info)  # one worker validates it all
    with pytest.raises(UserInputError, match="has 1 images, fewer than the 2 workers"):
        check_splits(config, info, workers=2)


def test_bce_targets_every_smoothed_class_passes_are_refused_before_any_work(tmp_path):
    """--bce_loss at its default threshold (0) with the default --smoothing=0.1 made every
    class a positive of every image: a run at chance (0.097 top-1 on digits), no warning."""

    from deit_keras.training.runner import check_bce_targets

    config = _tiny(tmp_path, bce_loss=True)
    assert config.augment.smoothing == 0.1 and config.bce_target_thresh == 0.0
    with pytest.raises(UserInputError, match="target of 0.01, not below --bce_target_thresh=0.0"):
        run_training(config)
    assert _nothing_written(config.model_dir)
    smoothed = _tiny(tmp_path, bce_loss=True, bce_target_thresh=0.011)
    check_bce_targets(smoothed, 10)  # 0.1 / 10 is below 0.011
    with pytest.raises(UserInputError, match="above 0.01"):  # at it, float32 rounding decides
        check_bce_targets(_tiny(tmp_path, bce_loss=True, bce_target_thresh=0.01), 10)
    with pytest.raises(UserInputError, match="each of the 20 classes a target of 0.005"):
        check_bce_targets(_tiny(tmp_path, bce_loss=True, bce_target_thresh=0.004), 20)
    unsmoothed = dataclasses.replace(
        config, augment=dataclasses.replace(config.augment, smoothing=0.0)
    )
    check_bce_targets(unsmoothed, 10)
    check_bce_targets(_tiny(tmp_path), 10)  # cross-entropy takes smoothed targets


def test_a_backup_made_with_other_settings_is_refused_before_any_work(tmp_path):
    config = _tiny(tmp_path)
    run_training(config)
    backup = os.path.join(config.model_dir, "backup")
    before = sorted(os.listdir(backup))
    with pytest.raises(backup_lib.BackupMismatchError) as raised:
        run_training(_tiny(tmp_path, lr=1e-3, epochs=2))
    message = str(raised.value)
    assert f"lr {config.lr!r} there, 0.001 now" in message and "epochs" not in message
    assert backup in message and "--model_dir" in message and "\n" not in message
    assert sorted(os.listdir(backup)) == before
    assert len(callbacks_lib.read_history(config.model_dir)) == 1


def test_more_epochs_resume_and_results_count_the_runs_epochs_and_seconds(tmp_path):
    first_seconds = run_training(_tiny(tmp_path))["wall_s"]
    backup = backup_lib.Backup(str(tmp_path / "run" / "backup"))
    assert backup.run_seconds() == first_seconds > 0  # the finished run's whole time
    started = time.time()
    results = run_training(_tiny(tmp_path, epochs=2))  # extended: resumes at epoch 1
    this_process = time.time() - started
    assert [record["epoch"] for record in callbacks_lib.read_history(tmp_path / "run")] == [0, 1]
    assert (results["epochs"], results["resumed_at_epoch"]) == (2, 1)
    # The preset's name, and what the overrides made of it (it read as a 224 px DeiT-Ti).
    assert results["model"] == "deit_tiny_distilled_patch16_224"
    written = json.loads((tmp_path / "run" / "results.json").read_text())["architecture"]
    sizes = ("image_size", "patch_size", "embed_dim", "depth", "num_heads")
    config = _tiny(tmp_path)
    expected = {name: getattr(config, name) for name in sizes}
    assert written == dict(expected, mlp_ratio=4.0, num_classes=10, distilled=True)
    # The run's wall time: this process's and the first's, not the last's alone.
    assert (
        first_seconds + this_process - 0.2
        <= results["wall_s"]
        <= first_seconds + this_process + 0.1
    )
    assert backup.run_seconds() > first_seconds  # the second process's save added its time
    again = run_training(_tiny(tmp_path, epochs=2))  # finished: trains nothing
    assert (again["epochs"], again["resumed_at_epoch"]) == (2, 2)
    # Fewer epochs than the run has: was accepted, training nothing, its flags.txt saying 1.
    with pytest.raises(backup_lib.BackupMismatchError, match="trained 2 epochs .*--epochs=1:"):
        run_training(_tiny(tmp_path, epochs=1))


def test_a_teacher_trained_in_the_run_or_loaded_gives_the_same_run(tmp_path, caplog):
    """Training the teacher draws random numbers; the feature adapters built after it
    drew different weights than in a rerun that loads the teacher. The teacher's top-1 is
    said before a fresh run's student trains, not again by a resumed process (each restart
    of a preempted run would pay a pass over the evaluation split)."""
    config = _tiny(
        tmp_path,
        distillation_type="hard",
        teacher=str(tmp_path / "teacher.keras"),
        teacher_epochs=1,
        feature_distillation=True,
        # The same batches in both runs: parallel maps may reorder the stream otherwise
        # (1% apart in CI, two test processes sharing two cores).
        deterministic=True,
    )
    caplog.set_level(logging.WARNING)
    first = run_training(config)  # trains the teacher
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Teacher ")]
    top1 = f"{first['teacher_top1']:.4f}"
    assert said == [f"Teacher teacher.keras: top-1 {top1} on the evaluation split"], said
    first_loss = callbacks_lib.read_history(config.model_dir)[0]["feature_loss"]
    again = run_training(dataclasses.replace(config, resume=False))  # loads it
    # Equal up to thread-order rounding (the bug: 1.48 against 1.95).
    again_loss = callbacks_lib.read_history(config.model_dir)[0]["feature_loss"]
    assert again_loss == pytest.approx(first_loss, rel=1e-4)
    assert first["teacher_top1"] == again["teacher_top1"]
    assert again["top1"] == pytest.approx(first["top1"], abs=0.01)
    caplog.clear()
    resumed = run_training(dataclasses.replace(config, epochs=2))
    assert resumed["resumed_at_epoch"] == 1 and resumed["teacher_top1"] == first["teacher_top1"]
    assert not [r for r in caplog.records if r.getMessage().startswith("Teacher ")]


def test_a_run_puts_the_process_settings_back(tmp_path):
    """A `deterministic` run left op determinism on for the Python session (every later
    model compiled without XLA, by Keras' rule), and a run its precision policy."""
    from tensorflow.python.framework import config as framework

    keras.mixed_precision.set_global_policy("mixed_bfloat16")  # the session's own
    try:
        results = run_training(_tiny(tmp_path, deterministic=True, precision="float32"))
        assert results["epochs"] == 1
        assert not framework.is_op_determinism_enabled()
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_noresume_starts_a_fresh_history(tmp_path):
    run_training(_tiny(tmp_path, epochs=2))
    assert len(callbacks_lib.read_history(tmp_path / "run")) == 2
    earlier_events = set(os.listdir(tmp_path / "run" / "tensorboard" / "train"))
    # Other settings too: a new run, whose flags replace the old run's.
    run_training(_tiny(tmp_path, lr=1e-3, resume=False), flags_text="--noresume\n")
    # TensorBoard drew the earlier run's curve and this one's as one series.
    events = set(os.listdir(tmp_path / "run" / "tensorboard" / "train"))
    assert len(events) == 1 and not events & earlier_events
    assert (tmp_path / "run" / "flags.txt").read_text() == "--noresume\n"
    history = callbacks_lib.read_history(tmp_path / "run")
    assert [record["epoch"] for record in history] == [0]
    settings = json.loads((tmp_path / "run" / "backup" / "settings.json").read_text())
    assert settings["lr"] == 1e-3


def test_a_phase_before_the_last_leaves_the_trained_weights_not_the_ema():
    """`fit` ends by copying the EMA into the weights: a run resumed mid-epoch (two fits)
    trained its second phase from the average (--model_ema)."""
    import keras

    from deit_keras.training.runner import _weights_kept

    def fitted(kept):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(keras.optimizers.SGD(0.5, use_ema=True, ema_momentum=0.9), "mse")
        x, y = np.ones((8, 3), np.float32), np.full((8, 2), 5.0, np.float32)
        if kept:
            with _weights_kept(model.optimizer):
                model.fit(x, y, epochs=3, batch_size=8, verbose=0)
        else:
            model.fit(x, y, epochs=3, batch_size=8, verbose=0)
        average = [v.numpy() for v in model.optimizer._model_variables_moving_average]
        return model.get_weights(), average

    weights, average = fitted(kept=True)
    assert not np.allclose(weights[0], average[0])  # training goes on from its own weights
    weights, average = fitted(kept=False)
    np.testing.assert_allclose(weights[0], average[0])  # the run's last fit: the EMA


def test_a_run_trains_with_its_recipe_flags_and_saves_the_ema_weights(tmp_path):
    """The optimizer and objective flags reach the run (the saved model is compiled with
    them), and --model_ema (timm's ModelEma: official DeiT evaluates and saves `model_ema`)
    leaves the optimizer's moving average in the saved weights, not the last step's."""
    config = _tiny(
        tmp_path,
        lr=4e-3,
        warmup_epochs=1,
        warmup_lr=2e-6,
        min_lr=3e-6,
        weight_decay=0.03,
        clip_grad=0.7,
        layer_decay=0.8,
        model_ema=True,
        model_ema_decay=0.5,
        distillation_alpha=0.3,
        distillation_tau=2.5,
    )
    results = run_training(config)
    saved = keras.models.load_model(results["saved_model"])
    optimizer = saved.optimizer.get_config()
    assert optimizer["learning_rate"]["config"] == {
        "peak_lr": pytest.approx(4e-3 * config.batch_size / 512),
        "total_steps": 2,
        "warmup_steps": 2,  # one epoch of 2 steps
        "warmup_lr": 2e-6,
        "min_lr": 3e-6,
    }
    assert optimizer["weight_decay"] == pytest.approx(0.03)
    assert optimizer["global_clipnorm"] == pytest.approx(0.7)
    assert optimizer["layer_decay"] == pytest.approx(0.8)
    assert optimizer["use_ema"] and optimizer["ema_momentum"] == pytest.approx(0.5)
    objective = saved.distillation_step.loss
    assert (objective.alpha, objective.tau) == (pytest.approx(0.3), pytest.approx(2.5))

    averages = saved.optimizer._model_variables_moving_average
    assert len(averages) == len(saved.trainable_variables) > 0
    for variable, average in zip(saved.trainable_variables, averages, strict=True):
        np.testing.assert_array_equal(variable.numpy(), average.numpy(), err_msg=variable.path)
    last_step = keras.models.load_model(callbacks_lib.last_checkpoint(config.model_dir))
    assert not all(
        np.array_equal(mine.numpy(), last.numpy())
        for mine, last in zip(saved.trainable_variables, last_step.trainable_variables, strict=True)
    )
