"""--teacher_augment: the views a teacher trained by the run sees (issue #12 item 1)."""

import dataclasses
import types

import numpy as np
import pytest

from deit_keras.data.augment_config import AugmentConfig
from deit_keras.data.pipeline import dataset_info
from deit_keras.data.preprocessing import DEFAULT_PREPROCESSING
from deit_keras.errors import UserInputError
from deit_keras.testing import digits_config
from deit_keras.training import teacher


def test_teacher_views_crops_keep_geometry_only_student_keeps_everything(tmp_path):
    augment = AugmentConfig(rand_augment_ops=2, reprob=0.25, mixup_prob=0.5, translate=2)
    config = digits_config(tmp_path, augment=augment)
    assert config.teacher_augment == "crops"
    crops = teacher._teacher_dataset_config(config)
    assert (crops.rand_augment_ops, crops.reprob, crops.mixing) == (0, 0.0, False)
    assert (crops.translate, crops.crop_scale_min) == (2, augment.crop_scale_min)
    student = teacher._teacher_dataset_config(
        dataclasses.replace(config, teacher_augment="student")
    )
    assert student == augment
    three = AugmentConfig(
        rand_augment_ops=0, reprob=0.0, three_augment=True, simple_random_crop=True
    )
    crops = teacher._teacher_dataset_config(digits_config(tmp_path, augment=three))
    assert not crops.three_augment and crops.simple_random_crop  # geometry kept


def test_teacher_augment_is_checked(tmp_path):
    with pytest.raises(ValueError, match="teacher_augment must be one of"):
        digits_config(tmp_path, teacher_augment="all").validate()


def test_the_teacher_batch_is_shared_equally_by_the_replicas(tmp_path, monkeypatch):
    """A mirrored run on 3 replicas trained its teacher on batches of 64 first: Keras
    failed in the first step (AddN of [22, ...] and [20, ...] replica batches)."""
    assert teacher.teacher_batch_size(64, 1437) == 64
    assert [teacher.teacher_batch_size(64, 1437, n) for n in (2, 3, 5, 7)] == [64, 63, 60, 63]
    assert teacher.teacher_batch_size(64, 10, 4) == 8 and teacher.teacher_batch_size(64, 2, 4) == 4
    config = digits_config(tmp_path)
    assert config.teacher_batch_size == 64  # the default
    info = dataset_info("digits", config.data_dir)
    three = types.SimpleNamespace(num_replicas_in_sync=3)
    monkeypatch.setattr(teacher.tf.distribute, "get_strategy", lambda: three)
    train = teacher.teacher_train_dataset(config, info, 16, DEFAULT_PREPROCESSING)
    assert train.element_spec[0].shape[0] == 63
    # --teacher_batch_size (a ResNet-50 teacher at 384 px was killed for memory at 64).
    lower = dataclasses.replace(config, teacher_batch_size=8)
    train = teacher.teacher_train_dataset(lower, info, 16, DEFAULT_PREPROCESSING)
    assert train.element_spec[0].shape[0] == 6


def test_a_teacher_on_fewer_images_than_its_batch_trains(tmp_path):
    config = digits_config(tmp_path, train_fraction=0.02, teacher_epochs=2, jit_compile=False)
    info = dataset_info("digits", config.data_dir, train_fraction=0.02)
    assert info.num_train_examples < config.teacher_batch_size
    path = str(tmp_path / "teacher.keras")
    cnn = teacher.train_teacher(config, info, 16, path, DEFAULT_PREPROCESSING)
    assert len(cnn.history.history["loss"]) == 2  # an epoch of one batch, each epoch
    moments = [v for v in cnn.optimizer.variables if v.path.endswith("_momentum")]
    assert max(float(np.abs(v).max()) for v in moments) > 0  # AdamW stepped
    # Its classes beside it: a later run on another dataset is refused, not distilled from it.
    config = dataclasses.replace(config, teacher=path)
    teacher.check_teacher_dataset(config, info)  # this dataset's classes: reused
    renamed = dataclasses.replace(info, class_names=tuple(f"kind {i}" for i in range(10)))
    with pytest.raises(ValueError, match=r"trained on other classes \(0, 1, 2, 3, ...\)"):
        teacher.check_teacher_dataset(config, renamed)
    teacher.check_teacher_dataset(dataclasses.replace(config, distillation_type="none"), renamed)
    # A damaged classes file is one line naming it (was json's traceback).
    with open(path + ".classes.json", "w", encoding="utf-8") as handle:
        handle.write('["0", "1"')
    with pytest.raises(UserInputError, match=r"Could not read class names .*teacher.keras.classes"):
        teacher.check_teacher_dataset(config, info)


def test_the_runs_teachers_undo_the_students_own_mean_and_std(tmp_path):
    """deit-train's builders: a --finetune student of other mean/std was refused at compile."""
    from types import SimpleNamespace

    from deit_keras.data.preprocessing import Preprocessing
    from deit_keras.testing import tiny_model

    halves = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3)
    config = digits_config(
        tmp_path,
        teacher="mobilenetv3small",
        teacher_base="mobilenetv3small",
        teacher_weights="none",
    )
    info = SimpleNamespace(num_classes=10, class_names=tuple(range(10)))
    built = teacher.make_teacher(config, info, tiny_model(preprocessing=halves))
    tuned = teacher._teacher_to_train(config, 10, 32, halves)
    assert [built.student_preprocessing, tuned.student_preprocessing] == [halves, halves]
