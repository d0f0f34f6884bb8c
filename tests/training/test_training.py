import math
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from deit_keras.distill.losses import DistillationLoss
from deit_keras.testing import tiny_model
from deit_keras.training.optim import WarmupCosine, create_optimizer, scaled_learning_rate

RNG = np.random.default_rng(0)
Y = RNG.dirichlet(np.ones(5), size=4).astype("float32")  # soft targets (smoothing/mixup)
CLS = RNG.normal(size=(4, 5)).astype("float32")
DIST = RNG.normal(size=(4, 5)).astype("float32")
TEACHER = RNG.normal(size=(4, 5)).astype("float32")


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def cross_entropy(targets, logits):
    return float(np.mean(-(targets * log_softmax(logits)).sum(-1)))


def test_hard_distillation_loss_by_hand():
    total, cls_loss, dist_loss = DistillationLoss("hard", alpha=0.5)(Y, CLS, DIST, TEACHER)
    teacher_labels = np.eye(5)[TEACHER.argmax(-1)]
    expected = 0.5 * cross_entropy(Y, CLS) + 0.5 * cross_entropy(teacher_labels, DIST)
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)
    np.testing.assert_allclose(float(dist_loss), cross_entropy(teacher_labels, DIST), rtol=1e-5)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_soft_distillation_loss_by_hand(tau):
    total, _, dist_loss = DistillationLoss("soft", alpha=0.3, tau=tau)(Y, CLS, DIST, TEACHER)
    log_p_teacher, log_p_student = log_softmax(TEACHER / tau), log_softmax(DIST / tau)
    # the reference: KL summed over batch x classes, divided by numel, times tau^2
    kl = (np.exp(log_p_teacher) * (log_p_teacher - log_p_student)).sum() / DIST.size * tau**2
    np.testing.assert_allclose(float(dist_loss), kl, rtol=1e-4)
    np.testing.assert_allclose(float(total), 0.7 * cross_entropy(Y, CLS) + 0.3 * kl, rtol=1e-4)


def test_no_distillation_trains_both_heads_on_labels():
    total, cls_loss, dist_loss = DistillationLoss("none")(Y, CLS, DIST)
    np.testing.assert_allclose(float(dist_loss), cross_entropy(Y, DIST), rtol=1e-5)
    np.testing.assert_allclose(
        float(total), (cross_entropy(Y, CLS) + cross_entropy(Y, DIST)) / 2, rtol=1e-5
    )


def test_bad_distillation_settings_are_rejected():
    with pytest.raises(ValueError, match="distillation"):
        DistillationLoss("medium")
    with pytest.raises(ValueError, match="alpha"):
        DistillationLoss("hard", alpha=1.5)


def test_schedule_warmup_then_cosine():
    schedule = WarmupCosine(1e-3, total_steps=100, warmup_steps=10, warmup_lr=1e-6, min_lr=1e-5)

    def lr(step):
        return float(schedule(step))

    np.testing.assert_allclose(lr(0), 1e-6, rtol=1e-5)
    np.testing.assert_allclose(lr(5), 1e-6 + (1e-3 - 1e-6) * 0.5, rtol=1e-5)
    for step in (10, 40, 99):  # timm: cosine of the absolute step
        expected = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * step / 100))
        np.testing.assert_allclose(lr(step), expected, rtol=1e-5)
    np.testing.assert_allclose(lr(100), 1e-5, rtol=1e-5)
    assert scaled_learning_rate(5e-4, 1024) == 1e-3


def test_weight_decay_skips_biases_norms_tokens():
    model = tiny_model()
    optimizer = create_optimizer(steps_per_epoch=2, epochs=2)
    optimizer.build(model.trainable_variables)
    decayed = {
        v.path.split("/")[-1] for v in model.trainable_variables if optimizer._use_weight_decay(v)
    }
    skipped = {
        v.path.split("/")[-1]
        for v in model.trainable_variables
        if not optimizer._use_weight_decay(v)
    }
    assert decayed == {"kernel"}
    assert skipped == {"bias", "gamma", "beta", "cls_token", "dist_token", "pos_embed"}


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


def batches(count=3, batch=4, seed=1):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(count * batch, 32, 32, 3)).astype("float32")
    labels = np.eye(10, dtype="float32")[rng.integers(0, 10, count * batch)]
    return images, labels


def compiled(model, teacher, distillation="hard", **kwargs):
    model.compile(
        optimizer=create_optimizer(1e-3, 512, 3, 2, warmup_epochs=0),
        teacher=teacher,
        distillation=distillation,
        **kwargs,
    )
    return model


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
    model.optimizer = create_optimizer(1e-2, 512, 2, 10, warmup_epochs=0)
    history = model.fit(images, labels, batch_size=4, epochs=10, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert set(history.history) >= {"loss", "cls_loss", "distill_loss", "top1", "top5", "lr"}


def test_resume_continues_epoch_step_lr_and_optimizer_state(tmp_path):
    images, labels = batches(count=3)

    def run(epochs, backup=None):
        keras.utils.set_random_seed(0)
        model = compiled(tiny_model(), None, distillation="none")
        callbacks = (
            [keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False)]
            if backup
            else []
        )
        history = model.fit(
            images,
            labels,
            batch_size=4,
            epochs=epochs,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
        )
        return model, history

    straight, _ = run(3)
    run(2, tmp_path)  # "crashes" after two epochs
    resumed, history = run(3, tmp_path)
    assert len(history.epoch) == 1 and history.epoch == [2]
    assert int(resumed.optimizer.iterations) == int(straight.optimizer.iterations) == 9
    np.testing.assert_allclose(
        float(resumed.optimizer.learning_rate), float(straight.optimizer.learning_rate)
    )
    for a, b in zip(resumed.optimizer.variables, straight.optimizer.variables, strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-6)
    for a, b in zip(resumed.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


MIRRORED_SCRIPT = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from deit_keras.testing import tiny_model
    from deit_keras.training.optim import create_optimizer
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 32, 32, 3)).astype("float32")
    labels = np.eye(10, dtype="float32")[rng.integers(0, 10, 8)]
    def step(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            teacher = keras.Sequential(
                [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
            teacher(images[:1])
            model = tiny_model()
            model.compile(optimizer=create_optimizer(1e-2, 512, 1, 1, warmup_epochs=0),
                          teacher=teacher, distillation="hard")
        history = model.fit(images, labels, batch_size=8, epochs=1, shuffle=False, verbose=0)
        return history.history["loss"][0], model.get_weights()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    loss_one, weights_one = step(tf.distribute.OneDeviceStrategy("/cpu:0"))
    loss_two, weights_two = step(strategy)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(weights_one, weights_two))
    moved = max(float(np.abs(a).max()) for a in weights_one)
    print("RESULT", loss_one, loss_two, diff)
    assert abs(loss_one - loss_two) < 1e-5, (loss_one, loss_two)
    assert diff < 1e-5, diff
""")


def test_mirrored_two_replicas_match_one_device():
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RESULT" in result.stdout


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
