"""DistillationLoss against the official losses.py, computed by hand."""

import numpy as np
import pytest

from deit_keras.distill.losses import DistillationLoss, SoftDistillation

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


def test_soft_distillation_corrects_a_confident_student():
    """Probabilities below 1e-7 were clipped (Keras' KLDivergence): a student sure of
    class 0 (logit 20) where the teacher says 0 or 3 got no gradient at all."""
    import tensorflow as tf

    student = np.zeros((2, 10), np.float32)
    student[:, 0] = 20.0
    teacher = np.zeros((2, 10), np.float32)
    teacher[:, [0, 3]] = 5.0
    logits = tf.Variable(student)
    with tf.GradientTape() as tape:
        _, _, dist_loss = DistillationLoss("soft", alpha=1.0, tau=1.0)(
            np.eye(10, dtype=np.float32)[:2], logits, logits, teacher
        )
    gradient = tape.gradient(dist_loss, logits).numpy()
    p_student, p_teacher = np.exp(log_softmax(student)), np.exp(log_softmax(teacher))
    np.testing.assert_allclose(gradient, (p_student - p_teacher) / student.size, atol=1e-6)
    assert gradient[0, 3] < -0.02  # pushed towards the teacher's second class


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


@pytest.mark.parametrize("tau", [0.0, -1.0])
def test_a_temperature_that_is_not_positive_is_rejected(tau):
    """The soft term divides the logits by tau (and scales by tau^2): 0 gives NaN/inf
    losses, a negative one rewards the student for inverting the teacher's ranking."""
    with pytest.raises(ValueError, match="tau > 0"):
        DistillationLoss("soft", tau=tau)


def test_hard_distillation_through_the_class_token_by_hand():
    """No dist token (the paper's Table 3 "hard distillation" row of DeiT): both terms
    train the class head, 0.5 * CE(cls, y) + 0.5 * CE(cls, argmax(teacher))."""
    total, cls_loss, dist_loss = DistillationLoss("hard", alpha=0.5)(Y, CLS, None, TEACHER)
    teacher_labels = np.eye(5)[TEACHER.argmax(-1)]
    by_hand = 0.5 * cross_entropy(Y, CLS) + 0.5 * cross_entropy(teacher_labels, CLS)
    np.testing.assert_allclose(float(total), by_hand, rtol=1e-5)
    np.testing.assert_allclose(float(cls_loss), cross_entropy(Y, CLS), rtol=1e-5)
    np.testing.assert_allclose(float(dist_loss), cross_entropy(teacher_labels, CLS), rtol=1e-5)
    # Not the dist-token objective: the same call with a dist head gives another number.
    with_dist = float(DistillationLoss("hard", alpha=0.5)(Y, CLS, DIST, TEACHER)[0])
    assert abs(with_dist - by_hand) > 1e-3


def test_soft_distillation_through_the_class_token_by_hand():
    tau = 3.0
    total, _, dist_loss = DistillationLoss("soft", alpha=0.1, tau=tau)(Y, CLS, None, TEACHER)
    log_p_teacher, log_p_student = log_softmax(TEACHER / tau), log_softmax(CLS / tau)
    kl = (np.exp(log_p_teacher) * (log_p_teacher - log_p_student)).sum() / CLS.size * tau**2
    np.testing.assert_allclose(float(dist_loss), kl, rtol=1e-4)
    np.testing.assert_allclose(float(total), 0.9 * cross_entropy(Y, CLS) + 0.1 * kl, rtol=1e-4)


def test_no_distillation_without_dist_token_is_the_class_head_loss():
    total, cls_loss, dist_loss = DistillationLoss("none")(Y, CLS)
    np.testing.assert_allclose(float(total), cross_entropy(Y, CLS), rtol=1e-5)
    assert float(cls_loss) == float(total) and float(dist_loss) == 0.0


def test_the_soft_term_round_trips_with_its_temperature():
    loss = SoftDistillation(tau=3.0)
    again = SoftDistillation.from_config(loss.get_config())
    assert again.tau == 3.0
    np.testing.assert_allclose(float(again(TEACHER, CLS)), float(loss(TEACHER, CLS)), rtol=1e-6)
