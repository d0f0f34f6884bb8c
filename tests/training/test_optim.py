"""The DeiT learning-rate rule, warmup-cosine schedule and weight-decay exclusions."""

import math

import numpy as np

from deit_keras.testing import tiny_model
from deit_keras.training.optim import WarmupCosine, create_optimizer, scaled_learning_rate


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
