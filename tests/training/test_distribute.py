"""`make_strategy`: which strategy each name builds on this (GPU-less) machine."""

import types

import pytest
import tensorflow as tf

from deit_keras.errors import UserEnvironmentError, UserInputError
from deit_keras.training import custom_loop
from deit_keras.training.distribute import check_tf_config, make_strategy

needs_no_gpu = pytest.mark.skipif(
    bool(tf.config.list_physical_devices("GPU")), reason="the CPU-only choice"
)


@needs_no_gpu
def test_the_evaluation_batch_is_shared_equally_by_the_replicas():
    """--batch_size=384 on 3 replicas evaluated in batches of 256, which Keras under
    MirroredStrategy cannot split: the epoch trained, then its validation failed."""

    def replicas(count):
        return types.SimpleNamespace(num_replicas_in_sync=count)

    assert custom_loop.eval_batch_size(384, replicas(3)) == 255
    assert custom_loop.eval_batch_size(384, replicas(1)) == custom_loop.EVAL_BATCH_CAP == 256
    assert custom_loop.eval_batch_size(96, replicas(3)) == 96  # a multiple already
    assert custom_loop.eval_batch_size(600, replicas(300)) == 300
    assert custom_loop.eval_batch_size(1024, replicas(8)) == 256


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


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{bad", "TF_CONFIG is not valid JSON"),
        ("[1]", "TF_CONFIG must be a JSON object"),
        ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 5}}',
         "TF_CONFIG's task is not in its cluster"),
        ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "chief", "index": 0}}',
         "TF_CONFIG's task is not in its cluster"),
        # The bounds: one past the last worker, and a negative index.
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
         "TF_CONFIG's task is not in its cluster"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": -1}}',
         "TF_CONFIG's task is not in its cluster"),
        ('{"cluster": {"worker": ["a:1"], "evaluator": ["b:2"]}, '
         '"task": {"type": "evaluator", "index": 0}}', "task type must be chief or worker"),
    ],
)  # fmt: skip
def test_a_tf_config_that_names_no_place_in_a_cluster_is_one_line(monkeypatch, text, problem):
    with pytest.raises(UserInputError, match=problem):
        check_tf_config(text)
    monkeypatch.setenv("TF_CONFIG", text)
    with pytest.raises(UserInputError, match=problem):  # before TensorFlow reads it
        make_strategy("multi_worker")


@pytest.mark.parametrize(
    "text",
    [
        None,
        "{}",  # TensorFlow: one worker alone
        '{"cluster": {}, "task": {}}',
        '{"task": {"type": "worker", "index": 0}}',
        '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}',
        '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}',  # int("0")
        '{"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "chief", "index": 0}}',
    ],
)
def test_the_tf_configs_tensorflow_takes_pass(text):
    check_tf_config(text)


@pytest.mark.skipif(bool(tf.config.list_logical_devices("TPU")), reason="no TPU to miss")
def test_no_tpu_to_reach_is_one_line_about_the_environment():
    with pytest.raises(UserEnvironmentError, match="Could not reach a local TPU"):
        make_strategy("tpu")
