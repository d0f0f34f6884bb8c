"""The run's frozen teacher: trained first when missing, loaded, adapted to the student.

The runner and the ablation both get their teacher here: `make_teacher` (the
run's, training it first when `--teacher` names a missing `.keras` file and
`--teacher_epochs` allows), `share_teacher` (multi-worker: the chief trains it
once) and `train_teacher` (a CNN teacher trained on the run's dataset).
"""

import dataclasses
import os

import keras
import tensorflow as tf
from absl import logging

from deit_keras.data.pipeline import make_dataset
from deit_keras.deploy import saving, teacher_weights
from deit_keras.distill import regnet, teachers
from deit_keras.errors import UserInputError
from deit_keras.io.atomic import atomic_output
from deit_keras.models.variants import get_variant
from deit_keras.training import custom_loop, precise_batch_norm
from deit_keras.training.optim import create_optimizer


def teacher_batch_size(asked: int, num_train_examples: int, replicas: int = 1) -> int:
    """`asked` (`--teacher_batch_size`), or the whole train split when smaller (incomplete
    batches are dropped, so a larger batch would train nothing), shared equally by the
    `replicas` it is trained on."""
    return custom_loop.replicas_share(max(min(asked, num_train_examples), 1), replicas)


def _replicas() -> int:
    """The replicas of the strategy in scope (one outside any)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def _teacher_dataset_config(config):
    """The views a teacher trained here sees (`--teacher_augment`).

    "crops": the student's crop, translation and flip settings only (a CNN
    needs no ViT-strength recipe to fit); "student": the student's whole
    recipe, so the teacher has seen the kind of views it will label.
    """
    if config.teacher_augment == "student":
        return config.augment
    return dataclasses.replace(
        config.augment, rand_augment_ops=0, three_augment=False, reprob=0.0, mixup=0.0, cutmix=0.0
    )


def _teacher_weights(config):
    """`--teacher_weights`, with "none" (random weights) as None."""
    weights = config.teacher_weights
    return None if weights in ("", "none", "None") else weights


def _teacher_to_train(config, num_classes, image_size, preprocessing):
    """`--teacher_base` with a new head (fine-tuned), else the small CNN (from scratch)."""
    if config.teacher_base:
        return teachers.build_finetune_teacher(
            config.teacher_base,
            num_classes,
            image_size,
            weights=_build_weights(config, config.teacher_base),
            student_preprocessing=preprocessing,
        )
    return teachers.build_small_cnn(num_classes, image_size)


def student_input(config) -> tuple:
    """`(image_size, preprocessing)` of the run's student, before the student exists."""
    variant = get_variant(config.model)
    return config.image_size or variant.image_size, variant.preprocessing.replace(
        crop_pct=config.crop_pct
    )


def teacher_train_dataset(config, info, image_size, preprocessing, seed=None):
    """The `(images, one-hot labels)` batches a teacher trained here learns from:
    `teacher_batch_size` of them, the views of `_teacher_dataset_config`."""
    return make_dataset(
        config.dataset,
        "train",
        image_size=image_size,
        batch_size=teacher_batch_size(
            config.teacher_batch_size, info.num_train_examples, _replicas()
        ),
        training=True,
        augment=_teacher_dataset_config(config),
        preprocessing=preprocessing,
        data_dir=config.data_dir,
        seed=config.seed if seed is None else seed,
        train_fraction=config.train_fraction,
    )


def train_teacher(config, info, image_size, path, preprocessing):
    """Trains the run's teacher (`_teacher_to_train`) on its dataset and saves it to `path`.

    Batches of `teacher_batch_size`; `--teacher_lr` is used as it is, whatever the batch.
    Its BatchNorm statistics are then recomputed on the training stream
    (`precise_batch_norm`): a teacher trained briefly predicts as it did in training.
    """
    train = teacher_train_dataset(config, info, image_size, preprocessing)
    batch_size = train.element_spec[0].shape[0]  # the dataset's: one rule, one place
    cnn = _teacher_to_train(config, info.num_classes, image_size, preprocessing)
    steps = max(info.num_train_examples // batch_size, 1)
    cnn.compile(
        optimizer=create_optimizer(
            base_lr=config.teacher_lr,
            global_batch_size=batch_size,
            scale_lr=False,  # --teacher_lr as it is
            steps_per_epoch=steps,
            epochs=config.teacher_epochs,
            warmup_epochs=1,
            weight_decay=0.05,
        ),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=config.train_jit_compile,
    )
    cnn.fit(train, epochs=config.teacher_epochs, verbose=config.fit_verbose, shuffle=False)
    stream = train.repeat().take(precise_batch_norm.PRECISE_BATCHES)
    precise_batch_norm.recalibrate_batch_norm(cnn, (images for images, _ in stream))
    with atomic_output(path) as temporary:
        cnn.save(temporary)
    # Which classes it predicts: a later run on another dataset must not reuse it.
    saving.write_class_names(path, info.class_names)
    return cnn


def check_teacher_dataset(config, info) -> None:
    """Refuses a `.keras` teacher trained here on classes other than this dataset's (its
    `<teacher>.classes.json`); a teacher without that file (the user's own) passes."""
    if config.distillation_type == "none":
        return
    trained_on = saving.read_class_names(config.teacher)
    if trained_on is not None and trained_on != [str(name) for name in info.class_names]:
        raise UserInputError(
            f"The teacher {config.teacher} was trained on other classes "
            f"({', '.join(trained_on[:4])}, ...) than this dataset's "
            f"({', '.join(map(str, info.class_names[:4]))}, ...): pass --teacher=NEW.keras "
            "(this run trains it with --teacher_epochs), or delete the old one."
        )


def teacher_missing(config) -> bool:
    """True when the run must train its teacher first; ValueError when it may not."""
    if config.distillation_type == "none" or not config.teacher.endswith(".keras"):
        return False
    if os.path.exists(config.teacher):
        return False
    if config.teacher_epochs <= 0:
        raise UserInputError(
            f"Teacher file {config.teacher} does not exist; train one or set "
            "--teacher_epochs to have this run train a small CNN teacher first."
        )
    return True


def _train_missing_teacher(config, info, image_size, preprocessing):
    logging.warning(
        "Training a %s teacher for %d epochs -> %s",
        config.teacher_base or "small CNN",
        config.teacher_epochs,
        config.teacher,
    )
    train_teacher(config, info, image_size, config.teacher, preprocessing)


def share_teacher(config, info, strategy):
    """Multi-worker: the chief trains a missing teacher, once; the others wait for its file.

    Runs before the strategy scope (a `fit` under `MultiWorkerMirroredStrategy`
    fails, keras-team/keras#20585): the chief trains on its own; the file
    appears whole (atomic rename) on the shared storage.
    """
    if not teacher_missing(config):
        return
    if custom_loop.is_chief(strategy):
        _train_missing_teacher(config, info, *student_input(config))
    else:
        custom_loop.wait_for_file(config.teacher, config.teacher_wait_s, "the chief's teacher")


def _build_weights(config, teacher):
    """`--teacher_weights` as the builders take them: a RegNetY's read into a state dict."""
    weights = _teacher_weights(config)
    name = regnet.canonical_name(teacher)
    if name is None or weights is None:
        return weights
    return teacher_weights.teacher_state(name, weights)


def _check_release_classes(config, num_classes):
    """A released RegNetY teacher predicts ImageNet's classes: refused before its download."""
    name = regnet.canonical_name(config.teacher)
    released = teacher_weights.RELEASED_CLASSES
    if name and teacher_weights.is_release(config.teacher_weights) and num_classes != released:
        raise UserInputError(
            f"The released {config.teacher} teacher predicts the {released} ImageNet classes "
            f"but the dataset has {num_classes}: give a teacher of your classes (--teacher="
            f"PATH.keras, or trained in the run: docs/finetune.md) or --teacher_weights=PATH. "
            f"Received: teacher={config.teacher}, teacher_weights={config.teacher_weights}"
        )


def check_teacher_fits(config, info) -> None:
    """Refuses, before any work, a teacher that predicts other classes than the dataset's:
    the released RegNetY for a dataset that is not ImageNet's, or a `.keras` teacher
    trained here on another dataset."""
    if config.distillation_type == "none":
        return
    _check_release_classes(config, info.num_classes)
    check_teacher_dataset(config, info)


def make_teacher(config, info, student):
    if config.distillation_type == "none":
        return None
    check_teacher_fits(config, info)
    if teacher_missing(config):
        _train_missing_teacher(config, info, student.image_size, student.preprocessing)
    return teachers.build_teacher(
        config.teacher,
        info.num_classes,
        student.image_size,
        weights=_build_weights(config, config.teacher),
        input_convention=config.teacher_input,
        student_preprocessing=student.preprocessing,
    )
