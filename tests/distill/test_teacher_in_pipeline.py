"""The teacher's logits computed in the input pipeline (`distill.step.with_teacher_logits`)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deit_keras.distill.step import with_teacher_logits
from deit_keras.testing import batches, compiled, tiny_model


def _teacher():
    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(4, 4, strides=4, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )


def _trained(in_pipeline, jit_compile):
    keras.utils.set_random_seed(0)
    model = compiled(tiny_model(), _teacher(), "hard", jit_compile=jit_compile)
    images, labels = batches(count=3, batch=4)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    if in_pipeline:
        data = with_teacher_logits(data, model.teacher)
        first_images, first_targets = next(iter(data))
        expected = model.teacher(first_images, training=False)
        np.testing.assert_allclose(first_targets["teacher_logits"], expected, rtol=1e-6, atol=1e-6)
    history = model.fit(data, epochs=2, verbose=0, shuffle=False)
    evaluation = model.evaluate(data, verbose=0, return_dict=True)
    return model.get_weights(), history.history, evaluation


# The train step's default (XLA) in CI; without XLA ~25 s more.
@pytest.mark.parametrize("jit_compile", [True, pytest.param(False, marks=pytest.mark.large)])
def test_same_training_as_calling_the_teacher_in_the_step(jit_compile):
    weights, history, evaluation = _trained(False, jit_compile)
    weights_p, history_p, evaluation_p = _trained(True, jit_compile)
    for a, b in zip(weights, weights_p, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(history["loss"], history_p["loss"], rtol=1e-5)
    assert history["teacher_agreement"] == history_p["teacher_agreement"]
    np.testing.assert_allclose(evaluation["loss"], evaluation_p["loss"], rtol=1e-5)


def test_the_teacher_leaves_the_pipeline_where_an_accelerator_runs_the_step(monkeypatch):
    """tf.data runs on the host CPU: on one GPU the teacher (RegNetY-16GF: 16 GFLOPs an
    image) ran there, in the pipeline, while the GPU waited."""
    from deit_keras.training import runner

    model = compiled(tiny_model(), _teacher(), "hard")
    assert runner.teacher_in_pipeline(model)  # this CPU box: off the step's critical path
    listing = tf.config.list_logical_devices
    for accelerator in ("GPU", "TPU"):
        fake = [tf.config.LogicalDevice(f"/device:{accelerator}:0", accelerator)]
        monkeypatch.setattr(
            tf.config,
            "list_logical_devices",
            lambda kind=None, fake=fake, accelerator=accelerator: (
                fake if kind == accelerator else listing(kind)
            ),
        )
        assert not runner.teacher_in_pipeline(model), accelerator
    assert not runner.teacher_in_pipeline(compiled(tiny_model(), None, "none"))


def test_the_pipeline_runs_the_teacher_in_inference_mode():
    """Official DeiT calls `teacher_model.eval()`: a teacher with dropout (the small CNN
    trained in a run has some) gives the pipeline its deterministic inference logits."""
    keras.utils.set_random_seed(3)
    teacher = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(10),
        ]
    )
    model = compiled(tiny_model(), teacher, "hard")
    images, labels = batches(count=1, batch=4)
    data = with_teacher_logits(
        tf.data.Dataset.from_tensor_slices((images, labels)).batch(4), teacher
    )
    _, targets = next(iter(data))
    expected = model.teacher(images, training=False)
    np.testing.assert_allclose(targets["teacher_logits"], expected, rtol=1e-6, atol=1e-6)


def test_class_indices_out_of_range_are_refused_with_the_teachers_logits_beside_them():
    """With the teacher in the pipeline the labels are `{"targets", "teacher_logits"}`:
    1-based indices there trained on rows of zeros, unchecked (a bare `(images,
    labels)` dataset was refused)."""
    from deit_keras.errors import UserInputError

    model = compiled(tiny_model(), _teacher(), "hard")
    images, one_hot = batches(count=2, batch=4)
    indices = one_hot.argmax(-1)

    def dataset(labels):
        data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
        return with_teacher_logits(data, model.teacher)

    assert model.fit(dataset(indices), verbose=0).history["loss"][0] > 0.5
    wrong = indices.copy()
    wrong[5] = 10  # the second batch
    with pytest.raises(UserInputError, match=r"\[0, 10\) .*Received: labels from \S+ to 10"):
        model.fit(dataset(wrong), verbose=0)
