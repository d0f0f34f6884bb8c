"""DeiT III's binary cross-entropy against the PyTorch formula, by hand."""

import keras
import numpy as np
import pytest

from deit_keras.distill.base_losses import BinaryCrossEntropy
from deit_keras.distill.losses import DistillationLoss
from deit_keras.errors import UserInputError
from deit_keras.testing import batches, tiny_model

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(scale=3.0, size=(4, 5)).astype("float32")
# MixUp targets: lam = 0.7 of each label and 0.3 of the flipped batch's.
LABELS = np.array([0, 2, 2, 4])
TARGETS = (0.7 * np.eye(5)[LABELS] + 0.3 * np.eye(5)[LABELS[::-1]]).astype("float32")


def bce_with_logits(targets, logits):
    """torch.nn.BCEWithLogitsLoss(): -(t log s(x) + (1 - t) log(1 - s(x))), mean of all."""
    sigmoid = 1.0 / (1.0 + np.exp(-logits.astype("float64")))
    return float(np.mean(-(targets * np.log(sigmoid) + (1 - targets) * np.log(1 - sigmoid))))


def test_one_logit_by_hand():
    # x = 2, t = 1: log(1 + e^-2) = 0.126928; x = 2, t = 0: 2 + log(1 + e^-2) = 2.126928.
    loss = BinaryCrossEntropy(target_threshold=None)
    assert float(loss([[1.0, 0.0]], [[2.0, 2.0]])) == pytest.approx((0.126928 + 2.126928) / 2)


def test_soft_targets_match_pytorch_formula():
    loss = BinaryCrossEntropy(target_threshold=None)
    assert float(loss(TARGETS, LOGITS)) == pytest.approx(bce_with_logits(TARGETS, LOGITS), 1e-5)


def test_official_binarizes_the_mix():
    """engine.py `targets.gt(0.0)`: both classes of a mix are positives."""
    binary = (TARGETS > 0).astype("float32")
    assert binary.sum(1).tolist() == [2.0, 1.0, 1.0, 2.0]  # rows 1, 2 mix class 2 with itself
    value = float(BinaryCrossEntropy()(TARGETS, LOGITS))
    assert value == pytest.approx(bce_with_logits(binary, LOGITS), 1e-5)
    assert value != pytest.approx(bce_with_logits(TARGETS, LOGITS), 1e-3)
    # timm's target_threshold: 0.5 keeps only the 0.7 class.
    high = BinaryCrossEntropy(target_threshold=0.5)(TARGETS, LOGITS)
    assert float(high) == pytest.approx(bce_with_logits(np.eye(5)[LABELS], LOGITS), 1e-5)


def test_extreme_logits_stay_finite():
    value = BinaryCrossEntropy()([[1.0, 0.0]], [[-200.0, 200.0]])
    assert float(value) == pytest.approx(200.0)


def test_serialization_round_trip():
    loss = BinaryCrossEntropy(target_threshold=0.25)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, BinaryCrossEntropy) and clone.get_config() == loss.get_config()
    assert float(clone(TARGETS, LOGITS)) == float(loss(TARGETS, LOGITS))
    with pytest.raises(UserInputError, match="target_threshold"):
        BinaryCrossEntropy(target_threshold=1.0)


def test_is_the_label_term_of_distillation_loss():
    """The hard distillation term stays cross-entropy on the teacher's argmax, as official."""
    teacher = RNG.normal(size=(4, 5)).astype("float32")
    dist = RNG.normal(size=(4, 5)).astype("float32")
    plain = DistillationLoss("hard", alpha=0.5)
    bce = DistillationLoss("hard", alpha=0.5, base_loss=BinaryCrossEntropy())
    total, cls_loss, dist_loss = bce(TARGETS, LOGITS, dist, teacher)
    assert float(cls_loss) == pytest.approx(bce_with_logits((TARGETS > 0) * 1.0, LOGITS), 1e-5)
    assert float(dist_loss) == pytest.approx(float(plain(TARGETS, LOGITS, dist, teacher)[2]))
    assert float(total) == pytest.approx(0.5 * float(cls_loss) + 0.5 * float(dist_loss))


def test_deit_evaluates_and_trains_with_it():
    keras.utils.set_random_seed(0)
    model = tiny_model(drop_path_rate=0.0)
    model.compile(optimizer="adam", loss=BinaryCrossEntropy(), jit_compile=False)
    images, labels = batches(count=1)
    cls_logits, dist_logits = (np.asarray(x) for x in model.call_heads(images, training=False))
    logs = model.test_on_batch(images, labels, return_dict=True)
    # "none" with a dist token: both heads on the labels, the mean of the two terms.
    assert logs["cls_loss"] == pytest.approx(bce_with_logits(labels, cls_logits), 1e-4)
    expected = (bce_with_logits(labels, cls_logits) + bce_with_logits(labels, dist_logits)) / 2
    assert logs["loss"] == pytest.approx(expected, 1e-4)
