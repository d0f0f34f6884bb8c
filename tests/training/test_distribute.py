"""`make_strategy`: which strategy each name builds on this (GPU-less) machine."""

import pytest
import tensorflow as tf

from deit_keras.errors import UserInputError
from deit_keras.training.distribute import make_strategy

needs_no_gpu = pytest.mark.skipif(
    bool(tf.config.list_physical_devices("GPU")), reason="the CPU-only choice"
)


@needs_no_gpu
def test_auto_on_a_cpu_only_machine_is_the_default_strategy():
    strategy = make_strategy("auto")
    assert strategy is tf.distribute.get_strategy()
    assert not isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.num_replicas_in_sync == 1


def test_one_device_stays_a_one_device_strategy():
    assert isinstance(make_strategy("one_device"), tf.distribute.OneDeviceStrategy)


def test_an_unknown_strategy_is_one_line():
    with pytest.raises(UserInputError, match="Unknown strategy 'gpus'"):
        make_strategy("gpus")
