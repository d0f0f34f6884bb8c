"""DeiT's train/test step: the frozen teacher, both heads, XLA, strategies, mixed precision."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from deit_keras.testing import batches, compiled, tiny_model
from deit_keras.training.optim import create_optimizer


class RecordingTeacher(keras.Model):
    """Logits from a fixed projection of the mean pixel; remembers every batch it saw."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.seen = []
        self.dense = keras.layers.Dense(num_classes)

    def call(self, images, training=False):
        if tf.executing_eagerly():
            self.seen.append(np.array(images))
        return self.dense(keras.ops.mean(images, axis=(1, 2)))


def test_teacher_sees_the_student_batch_and_stays_frozen():
    images, labels = batches()
    teacher = RecordingTeacher()
    teacher(images[:1])
    teacher.seen.clear()
    before = [w.copy() for w in teacher.get_weights()]
    model = compiled(tiny_model(), teacher, run_eagerly=True)
    model.fit(images, labels, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert [len(batch) for batch in teacher.seen] == [4, 4, 4]
    np.testing.assert_array_equal(np.concatenate(teacher.seen), images)
    for old, new in zip(before, teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert len(model.trainable_variables) == len(tiny_model().trainable_variables)
    # Frozen as a layer too: a BatchNorm teacher then normalises with its moving statistics
    # even if called with training=True.
    assert not teacher.trainable and not teacher.trainable_variables


def test_none_ignores_the_teacher():
    images, labels = batches(count=1)
    teacher = RecordingTeacher()
    model = compiled(tiny_model(), teacher, distillation="none", run_eagerly=True)
    model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    assert teacher.seen == []


def test_both_heads_get_gradients():
    images, labels = batches(count=1)
    teacher = RecordingTeacher()
    model = compiled(tiny_model(), teacher)
    with tf.GradientTape() as tape:
        total = model.distillation_step.compute_loss(model, images, labels)[0]
    grads = tape.gradient(
        total, [model.head.kernel, model.head_dist.kernel, model.tokens.dist_token]
    )
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def test_fit_with_xla_reduces_loss():
    images, labels = batches(count=2)
    model = compiled(tiny_model(), RecordingTeacher(), jit_compile=True)
    model.optimizer = create_optimizer(
        base_lr=1e-2, global_batch_size=512, steps_per_epoch=2, epochs=10, warmup_epochs=0
    )
    history = model.fit(images, labels, batch_size=4, epochs=10, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert set(history.history) >= {"loss", "cls_loss", "distill_loss", "top1", "top5", "lr"}


def test_keras_callbacks_watch_deits_metrics_without_a_mode(tmp_path):
    """`EarlyStopping(monitor="val_top1")` raised in Keras' first epoch end ("isn't able
    to automatically determine whether that metric should be maximized"): Keras reads a
    direction only from `compile(metrics=...)`'s metrics, and DeiT reports its own."""
    images, labels = batches(count=2)
    model = compiled(tiny_model(), RecordingTeacher())
    watching = {
        "val_top1": keras.callbacks.EarlyStopping(monitor="val_top1", patience=5),
        "val_teacher_agreement": keras.callbacks.EarlyStopping(monitor="val_teacher_agreement"),
        "val_cls_loss": keras.callbacks.ModelCheckpoint(
            str(tmp_path / "best.keras"), monitor="val_cls_loss", save_best_only=True
        ),
    }
    told = keras.callbacks.EarlyStopping(monitor="val_cls_top1", mode="min", patience=5)
    history = model.fit(
        images,
        labels,
        batch_size=4,
        epochs=2,
        validation_data=(images, labels),
        callbacks=[*watching.values(), told],
        verbose=0,
    )
    assert len(history.history["val_top1"]) == 2 and (tmp_path / "best.keras").exists()
    modes = {monitor: callback.mode for monitor, callback in watching.items()}
    assert modes == {"val_top1": "max", "val_teacher_agreement": "max", "val_cls_loss": "min"}
    assert told.mode == "min"  # the user's own stays
    with pytest.raises(ValueError, match="monitor=val_no_such_metric"):  # Keras' own error
        model.fit(
            images,
            labels,
            batch_size=4,
            callbacks=[keras.callbacks.EarlyStopping(monitor="val_no_such_metric")],
            verbose=0,
        )


@pytest.mark.parametrize(
    "distilled, distillation, logged",
    [(False, "none", False), (True, "none", True), (False, "hard", True), (True, "soft", True)],
)
def test_distill_loss_is_logged_where_the_loss_has_that_term(distilled, distillation, logged):
    """No dist token and no teacher: no second term, so no `distill_loss` (it was 0)."""
    images, labels = batches(count=1)
    teacher = None if distillation == "none" else RecordingTeacher()
    model = compiled(tiny_model(distilled=distilled), teacher, distillation=distillation)
    logs = model.train_on_batch(images, labels, return_dict=True)
    assert ("distill_loss" in logs) == logged
    assert ("distill_loss" in [metric.name for metric in model.metrics]) == logged
    if logged:
        assert np.isfinite(logs["distill_loss"]) and logs["distill_loss"] > 0
    assert logs["cls_loss"] > 0


@pytest.mark.parametrize("dtype", ["int64", "float32"])
def test_index_labels_after_one_hot_rows_of_the_same_dtype_are_indices(dtype):
    """Keras retraces the step for the second label shape with `[None, None]`: `[B, 1]`
    indices were then taken as rows over the classes (loss 102 instead of 2.3)."""
    images, one_hot = batches(count=2)
    indices = one_hot.argmax(-1)[:, None].astype(dtype)
    model, fresh_model = (compiled(tiny_model(), None, distillation="none") for _ in "ab")
    fresh_model.set_weights(model.get_weights())
    model.optimizer = keras.optimizers.SGD(0.0)  # the weights stay: the losses compare
    fresh = fresh_model.evaluate(images, indices, verbose=0, return_dict=True)
    model.evaluate(images, one_hot.astype(dtype), verbose=0, return_dict=True)
    again = model.evaluate(images, indices, verbose=0, return_dict=True)
    for key in ("loss", "top1", "top5"):
        assert again[key] == pytest.approx(fresh[key], rel=1e-5), key
    history = model.fit(images, indices, batch_size=4, epochs=1, verbose=0)
    assert history.history["loss"][0] == pytest.approx(fresh["loss"], rel=1e-3)


MIRRORED_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np, tensorflow as tf
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from deit_keras.testing import batches, compiled, tiny_model
    from deit_keras.training.optim import create_optimizer
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 32, 32, 3)).astype("float32")
    labels = np.eye(10, dtype="float32")[rng.integers(0, 10, 8)]
    def step(strategy, clip, distillation):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            teacher = keras.Sequential(
                [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
            teacher(images[:1])
            model = tiny_model()
            optimizer = create_optimizer(
                base_lr=1e-2, global_batch_size=512, steps_per_epoch=1, epochs=1, warmup_epochs=0,
                clip_grad=clip,
            )
            model.compile(optimizer=optimizer, teacher=teacher, distillation=distillation)
        history = model.fit(images, labels, batch_size=8, epochs=1, shuffle=False, verbose=0)
        return history.history["loss"][0], [compared(w.path, w.numpy()) for w in model.weights]
    def compared(path, value):
        # The attention's key bias has no gradient in exact arithmetic (softmax ignores a
        # shift shared by all keys); Adam (PyTorch's epsilon) scales the two summation
        # orders' rounding noise up to moves 1e-5 apart.
        if path.endswith("attn/qkv/bias"):
            query, _, value = np.split(value, 3)
            return np.concatenate([query, value])
        return value
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    for case in sys.argv[1:]:  # one process for the cases: TensorFlow starts once
        clip, distillation = case.split(",")
        clip = None if clip == "none" else float(clip)
        loss_one, weights_one = step(tf.distribute.OneDeviceStrategy("/cpu:0"), clip, distillation)
        loss_two, weights_two = step(strategy, clip, distillation)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(weights_one, weights_two))
        print("RESULT", case, loss_one, loss_two, diff)
        assert abs(loss_one - loss_two) < 1e-5, (case, loss_one, loss_two)
        assert diff < 1e-5, (case, diff)
""")


def test_mirrored_two_replicas_match_one_device():
    """Hard, hard with a clip that binds (Keras clipped each replica's gradient before the
    sum), and soft (each term must be divided by the replicas)."""
    cases = ("none,hard", "0.01,hard", "none,soft")
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, *cases],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line.split()[1] for line in result.stdout.splitlines() if "RESULT" in line] == list(
        cases
    )


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_step(policy):
    images, labels = batches(count=1)
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = compiled(tiny_model(), RecordingTeacher(), jit_compile=True)
        assert model.blocks[0].attn.qkv.compute_dtype == policy.split("_")[1]
        assert model.blocks[0].attn.qkv.kernel.dtype == "float32"  # master weights stay fp32
        history = model.fit(images, labels, batch_size=4, epochs=2, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.all(np.isfinite(history.history["loss"]))
    if policy == "mixed_float16":  # Keras wraps the optimizer for loss scaling
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_teacher_agreement_is_the_dist_head_matching_the_teacher():
    images, labels = batches(count=2, batch=8)
    teacher = RecordingTeacher()
    teacher(images[:1])
    model = compiled(tiny_model(drop_path_rate=0.0), teacher)
    logs = model.evaluate(images, labels, batch_size=16, verbose=0, return_dict=True)
    _, dist_logits = model.call_heads(images, training=False)
    expected = np.mean(np.argmax(dist_logits, -1) == np.argmax(teacher(images), -1))
    assert logs["teacher_agreement"] == pytest.approx(expected, abs=1e-6)
    no_teacher = compiled(tiny_model(), teacher, distillation="none")
    logs = no_teacher.evaluate(images, labels, batch_size=16, verbose=0, return_dict=True)
    assert "teacher_agreement" not in logs


def test_top1_scores_the_mean_of_both_heads_as_inference_does():
    """A distilled model predicts with the mean of its heads' logits: `top1` (and `top5`)
    score that, `cls_top1` / `dist_top1` each head alone."""
    images, _ = batches(count=2, batch=8)
    keras.utils.set_random_seed(0)
    model = compiled(tiny_model(drop_path_rate=0.0), None, "none")
    cls_logits, dist_logits = (np.asarray(h) for h in model.call_heads(images, training=False))
    predicted = np.argmax((cls_logits + dist_logits) / 2, axis=-1)
    assert np.any(np.argmax(cls_logits, -1) != predicted)  # the heads disagree somewhere
    labels = np.eye(10, dtype="float32")[predicted]
    logs = model.evaluate(images, labels, batch_size=16, verbose=0, return_dict=True)
    assert logs["top1"] == 1.0
    assert logs["cls_top1"] == pytest.approx(np.mean(np.argmax(cls_logits, -1) == predicted))


def test_a_model_without_dist_token_distils_through_its_class_head():
    """The paper's class-token rows: the step trains the class head on labels and teacher."""
    images, labels = batches(count=2, batch=8)
    teacher = RecordingTeacher()
    teacher(images[:1])
    model = compiled(tiny_model(distilled=False, drop_path_rate=0.0), teacher, distillation="hard")
    total, cls_loss, dist_loss, cls_logits, dist_logits, teacher_logits, feature_loss = (
        model.distillation_step.compute_loss(model, images, labels, training=False)
    )
    assert feature_loss is None  # no feature distillation
    assert dist_logits is None
    teacher_labels = np.argmax(teacher_logits, -1)
    by_hand = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        teacher_labels, cls_logits
    )
    np.testing.assert_allclose(float(dist_loss), float(by_hand), rtol=1e-5)
    np.testing.assert_allclose(
        float(total), 0.5 * float(cls_loss) + 0.5 * float(by_hand), rtol=1e-5
    )
    logs = model.evaluate(images, labels, batch_size=16, verbose=0, return_dict=True)
    assert "dist_top1" not in logs and logs["top1"] == logs["cls_top1"]
    expected = np.mean(np.argmax(cls_logits, -1) == teacher_labels)
    assert logs["teacher_agreement"] == pytest.approx(expected, abs=1e-6)
    history = model.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    assert (
        np.isfinite(history.history["distill_loss"][0]) and history.history["distill_loss"][0] > 0
    )


def test_compile_refuses_what_would_train_a_wrong_objective_in_one_line():
    """A teacher of other classes (an ImageNet top on a 10-class student: a NaN loss under
    XLA), a loss by name (Keras' unreduced function on probabilities, `[B]` wide) or on
    probabilities, and sample or class weights, which the objective never read."""
    from deit_keras.distill import build_small_cnn
    from deit_keras.errors import UserInputError

    model = tiny_model()
    with pytest.raises(UserInputError, match="predicts 1000 classes but the student has 10"):
        compiled(model, build_small_cnn(1000, 32))
    for loss in ("categorical_crossentropy", keras.losses.CategoricalCrossentropy()):
        with pytest.raises(UserInputError, match="loss must be a keras.losses.Loss on logits"):
            compiled(model, None, distillation="none", loss=loss)
    smoothed = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    compiled(model, build_small_cnn(10, 32), loss=smoothed)
    images, labels = batches(count=1)
    for weights in ({"sample_weight": np.ones(4)}, {"class_weight": dict.fromkeys(range(10), 1)}):
        with pytest.raises(UserInputError, match="takes no sample_weight or class_weight"):
            model.fit(images, labels, batch_size=4, epochs=1, verbose=0, **weights)
    with pytest.raises(UserInputError, match="takes no sample_weight"):
        model.evaluate(images, labels, sample_weight=np.ones(4), verbose=0)
    assert np.isfinite(model.fit(images, labels, batch_size=4, verbose=0).history["loss"][0])


def test_integer_labels_train_and_evaluate_as_their_one_hot_rows():
    """Keras' sparse form (`[B]` or `[B, 1]` class indices) failed inside Keras ("target
    and output must have the same rank"); a sparse loss passed compile, then crashed in
    the top-k metric. Now indices are one-hot encoded by the step."""
    from deit_keras.distill import build_small_cnn
    from deit_keras.errors import UserInputError

    images, one_hot = batches(count=2)
    indices = one_hot.argmax(-1)
    teacher = build_small_cnn(10, 32)
    results = []
    for labels in (one_hot, indices, indices[:, None].astype("int64")):
        keras.utils.set_random_seed(0)
        model = compiled(tiny_model(drop_path_rate=0.0), teacher)
        history = model.fit(images, labels, batch_size=4, epochs=1, shuffle=False, verbose=0)
        results.append((history.history, model.evaluate(images, labels, verbose=0)))
    assert results[1] == results[0] and results[2] == results[0]
    # Labels of another rank on a model already traced: Keras retraces with an unknown rank.
    model.evaluate(images, indices, verbose=0)
    assert model.evaluate(images, indices[:, None], verbose=0) == results[0][1]
    # 1-based labels (10 in a model of 10 classes), or -1 for "unknown": rows of zeros.
    for wrong in (10, -1):
        labels = indices.copy()
        labels[0] = wrong
        with pytest.raises(UserInputError, match=r"whole numbers in \[0, 10\)"):
            model.fit(images, labels, batch_size=4, verbose=0)
        with pytest.raises(UserInputError, match="Class indices must be"):
            model.evaluate(images, labels[:, None], verbose=0)
        with pytest.raises(UserInputError, match="Class indices must be"):  # a list
            model.train_on_batch(images[:4], labels[:4].tolist())
    # Lists train as arrays do; NaN, 2.5 and strings are refused, not cut or crashed on.
    assert np.all(np.isfinite(model.train_on_batch(images[:4], indices[:4, None].tolist())))
    for wrong, problem in ([np.nan, "not all whole"], [2.5, "not all whole"], ["a", "numbers"]):
        labels = indices[:4].astype(object)
        labels[0] = wrong
        with pytest.raises(UserInputError, match=problem):
            model.train_on_batch(images[:4], labels.tolist())
    with pytest.raises(UserInputError, match="one-hot encodes integer labels"):
        compiled(tiny_model(), None, "none", loss=keras.losses.SparseCategoricalCrossentropy(True))
    with pytest.raises(UserInputError, match="has no heads"):
        compiled(tiny_model(num_classes=0), None, "none")


def test_class_indices_out_of_range_in_a_dataset_are_refused_under_xla_too():
    """Labels in a `tf.data` dataset outside `[0, C)` (1-based, -1 for unknown, 2.5) became
    rows of zeros: a loss of 0 and a top-1 read off an argmax of zeros, no error. Arrays
    were refused before; a dataset is checked batch by batch in tf.data, so the check
    holds in the XLA-compiled step (where an `Assert` is dropped)."""
    from deit_keras.errors import UserInputError

    images, one_hot = batches(count=2)
    indices = one_hot.argmax(-1)
    model = compiled(tiny_model(), None, "none", jit_compile=True)

    def dataset(labels):
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)

    good = model.fit(dataset(indices), validation_data=dataset(indices), verbose=0)
    assert good.history["loss"][0] > 0.5

    def wrong(value):
        labels = indices.astype("float32")
        labels[5] = value  # the second batch
        return labels

    with pytest.raises(UserInputError, match=r"\[0, 10\) .*Received: labels from \S+ to 10"):
        model.fit(dataset(wrong(10)), verbose=0)
    with pytest.raises(UserInputError, match=r"whole numbers in \[0, 10\).*from -1"):
        model.evaluate(dataset(wrong(-1)[:, None]), verbose=0)
    with pytest.raises(UserInputError, match=r"whole numbers in \[0, 10\)"):
        model.fit(dataset(indices), validation_data=dataset(wrong(2.5)), verbose=0)
    assert np.isfinite(model.evaluate(dataset(one_hot), verbose=0)[0])  # rows: not indices


def test_ragged_labels_or_images_are_one_line_saying_to_make_them_dense():
    """Variable-length label lists (`tf.ragged.constant`) failed inside the loss:
    "Failed to convert elements of tf.RaggedTensor ... to Tensor"."""
    from deit_keras.errors import UserInputError

    images, one_hot = batches(count=1)
    indices = one_hot.argmax(-1)
    model = compiled(tiny_model(), None, "none")
    ragged_labels = tf.ragged.constant([[int(index)] for index in indices])
    labelled = tf.data.Dataset.from_tensor_slices((images, ragged_labels)).batch(4)
    for run in (model.fit, model.evaluate):
        with pytest.raises(UserInputError, match="labels as a tf.RaggedTensor"):
            run(labelled, verbose=0)
    sized = [image[: 32 - index % 2] for index, image in enumerate(images[:4])]
    ragged_images = tf.data.Dataset.from_tensor_slices(
        (tf.ragged.constant(sized, ragged_rank=1), one_hot[:4])
    ).batch(4)
    with pytest.raises(UserInputError, match="images as a tf.RaggedTensor"):
        model.fit(ragged_images, verbose=0)
    dense = labelled.map(lambda image, label: (image, label.to_tensor()))
    assert np.isfinite(model.fit(dense, verbose=0).history["loss"][0])


def test_a_wholly_frozen_model_fits_as_in_keras_leaving_its_weights(caplog):
    """`model.trainable = False` then `fit` crashed in the optimizer ("not enough values to
    unpack"); Keras' own step warns and evaluates the loss and metrics."""
    images, labels = batches(count=1)
    model = compiled(tiny_model(), None, "none")
    model.trainable = False
    model.compile(optimizer="adamw", distillation="none")
    before = [weight.copy() for weight in model.get_weights()]
    history = model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert "has no trainable weights" in caplog.text


def test_a_headless_model_saved_compiled_by_an_earlier_version_loads_uncompiled(tmp_path, caplog):
    headless = tiny_model(num_classes=0)
    keras.Model.compile(headless, optimizer="adamw")  # what compile() allowed before
    path = str(tmp_path / "headless.keras")
    headless.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.num_classes == 0 and loaded.optimizer is None
    assert "loaded uncompiled" in caplog.text
    np.testing.assert_array_equal(loaded(batches(count=1)[0]), headless(batches(count=1)[0]))


def test_weights_by_position_and_old_files_named_losses():
    """`train_on_batch(x, y, w)` is refused before the trace like the keyword; a `.keras` file
    saved with a loss by name (taken before) still loads compiled, with the default loss."""
    from deit_keras.errors import UserInputError

    model = compiled(tiny_model(), None, distillation="none")
    images, labels = batches(count=1)
    with pytest.raises(UserInputError, match="takes no sample_weight"):
        model.train_on_batch(images, labels, np.ones(4))
    assert np.isfinite(model.train_on_batch(images, labels, return_dict=True)["loss"])
    config = model.get_compile_config()
    config["loss"] = "categorical_crossentropy"
    loaded = tiny_model()
    loaded.compile_from_config(config)
    assert loaded._base_loss is None and loaded.distillation_step is not None


def test_uint8_batches_are_one_line_on_every_training_path_and_training_goes_on():
    """`fit` on uint8 pixels failed in the patch conv with Keras' TypeError; a generator's
    batch is seen only inside the first trace, which then left the step unable to build the
    optimizer on the next `fit` ("Creating variables on a non-first call")."""
    model = tiny_model(num_classes=3)
    model.compile(optimizer="adamw", distillation="none")
    pixels = np.zeros((4, 32, 32, 3), np.uint8)
    targets = np.eye(3, dtype="float32")[[0, 1, 2, 0]]
    calls = {
        "fit": lambda: model.fit(pixels, targets, verbose=0),
        "fit on a dataset": lambda: model.fit(
            tf.data.Dataset.from_tensor_slices((pixels, targets)).batch(2), verbose=0
        ),
        "evaluate": lambda: model.evaluate(pixels, targets, verbose=0),
        "train_on_batch": lambda: model.train_on_batch(pixels, targets),
        "test_on_batch": lambda: model.test_on_batch(pixels, targets),
        "fit on a generator": lambda: model.fit(
            ((pixels, targets) for _ in range(2)), steps_per_epoch=1, verbose=0
        ),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="takes float images.*Received: dtype=uint8"):
            call()
            pytest.fail(f"{name} took uint8 pixels")
    history = model.fit(pixels.astype("float32"), targets, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_the_train_step_drops_paths_and_the_test_step_does_not():
    """Stochastic depth is part of DeiT's training (drop_path 0.1), never of its evaluation:
    with every residual branch dropped (rate ~1) a training forward skips the blocks, so
    each step's loss is the one of its own mode's forward, and not the other's."""
    images, labels = batches(count=1, batch=8)
    model = tiny_model(drop_path_rate=0.5)
    for block in model.blocks:
        block.drop_path.rate = 1.0 - 1e-7  # keeps a branch with probability 1e-7
    model = compiled(model, None, "none", jit_compile=False)
    step = model.distillation_step
    dropped = float(step.compute_loss(model, images, labels, training=True)[0])
    kept = float(step.compute_loss(model, images, labels, training=False)[0])
    assert abs(dropped - kept) > 1e-3  # the two modes tell apart
    evaluated = model.evaluate(images, labels, batch_size=8, verbose=0, return_dict=True)
    assert evaluated["loss"] == pytest.approx(kept, rel=1e-5)
    trained = model.train_on_batch(images, labels, return_dict=True)  # the loss before its update
    assert trained["loss"] == pytest.approx(dropped, rel=1e-5)
