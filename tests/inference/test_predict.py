"""The compiled inference functions (ours, Keras' predict, an eager `model(images)`) return the
op-by-op call's logits."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import deit_keras
from deit_keras.errors import UserInputError
from deit_keras.inference import evaluate
from deit_keras.inference.predict import predict_function
from deit_keras.models import cpu_predict
from deit_keras.testing import op_by_op, random_images, tiny_model


def test_predict_function_matches_eager_call():
    model = deit_keras.create_model(
        "deit_tiny_distilled_patch16_224", num_classes=10, image_size=32, depth=2
    )
    images = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype("float32")
    expected = op_by_op(model, images).numpy()
    for jit_compile in (True, False):
        logits = predict_function(model, jit_compile=jit_compile)(images).numpy()
        np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-5)


def _predict_compiles_with_xla(model, images):
    """Whether Keras' predict function (`predict_on_batch`'s) has an XLA-compiled step,
    as the step itself or as a function it calls (`models.cpu_predict`)."""
    model.predict_on_batch(images)
    graph = model.predict_function.get_concrete_function([(tf.constant(images),)]).graph
    library = graph.as_graph_def().library.function
    return any(
        op.node_def.attr["_XlaMustCompile"].b
        for op in graph.get_operations()
        if "_XlaMustCompile" in op.node_def.attr
    ) or any(function.attr["_XlaMustCompile"].b for function in library)


def test_predict_on_batch_uses_xla_on_cpu_by_default_and_matches_eager_call():
    model = tiny_model()
    images = random_images(batch=3)
    assert _predict_compiles_with_xla(model, images)
    np.testing.assert_allclose(
        model.predict_on_batch(images), op_by_op(model, images), atol=1e-5, rtol=1e-5
    )
    model.compile(optimizer="adamw")  # jit_compile="auto" keeps XLA for predict
    assert _predict_compiles_with_xla(model, images)


def split_from_2_and_4_images(monkeypatch, model):
    """The tiny model's batches split from 2 images on (2 shards) and 4 (4 shards)."""
    gflop = model.flops_per_image() / 1e9
    monkeypatch.setattr(cpu_predict, "SHARDS_FROM_GFLOP", ((4, 1.5 * gflop), (2, 0.5 * gflop)))


def test_predict_on_batch_in_shards_matches_eager_call(monkeypatch):
    model = tiny_model()
    split_from_2_and_4_images(monkeypatch, model)
    assert cpu_predict.smallest_batches(model.flops_per_image()) == [(4, 4), (2, 2)]
    for batch in (1, 3, 9):
        images = random_images(batch=batch)
        np.testing.assert_allclose(
            model.predict_on_batch(images), op_by_op(model, images), atol=1e-5, rtol=1e-5
        )
    assert model._cpu_mode == "cpu_predict"


def counted_traces(monkeypatch):
    """The images specs `cpu_predict.traced_once` traces the model for, from now on."""
    specs, traced_once = [], cpu_predict.traced_once

    def counted(forward, spec):
        specs.append(spec)
        return traced_once(forward, spec)

    monkeypatch.setattr(cpu_predict, "traced_once", counted)
    return specs


def test_predict_step_traces_the_forward_once_across_its_own_traces(monkeypatch):
    model = tiny_model()
    split_from_2_and_4_images(monkeypatch, model)
    specs = counted_traces(monkeypatch)
    for batch in (9, 3, 5, 1):  # Keras traces its step again for new batch shapes
        images = random_images(batch=batch)
        np.testing.assert_allclose(
            model.predict_on_batch(images), op_by_op(model, images), atol=1e-5, rtol=1e-5
        )
    assert specs == [tf.TensorSpec([None, 32, 32, 3], tf.float32)]


def test_predict_keeps_an_explicit_no_xla_choice():
    model = tiny_model()
    model.compile(optimizer="adamw", jit_compile=False)
    assert not _predict_compiles_with_xla(model, random_images(batch=3))
    assert model.jit_compile is False  # training and evaluation too
    assert model._cpu_mode != "cpu_predict"


def _spy_on_shards(monkeypatch):
    """The shard counts `cpu_predict.sharded_forward` is traced with, in order."""
    traced, sharded_forward = [], cpu_predict.sharded_forward

    def spy(forward, images, shards):
        traced.append(shards)
        return sharded_forward(forward, images, shards)

    monkeypatch.setattr(cpu_predict, "sharded_forward", spy)
    return traced


@pytest.mark.parametrize("distilled", [True, False])
def test_evaluate_heads_in_shards_match_eager_heads_and_trace_each_count_once(
    monkeypatch, distilled
):
    model = tiny_model(distilled=distilled)
    split_from_2_and_4_images(monkeypatch, model)
    traced = _spy_on_shards(monkeypatch)
    heads = evaluate.outputs_function(model)
    for batch in (1, 3, 9, 5, 2):
        images = random_images(batch=batch)
        cls_logits, dist_logits = model.call_heads(images, training=False)
        outputs = heads(images)
        np.testing.assert_allclose(outputs["cls_"], cls_logits, atol=1e-5, rtol=1e-5)
        if distilled:
            np.testing.assert_allclose(outputs["dist_"], dist_logits, atol=1e-5, rtol=1e-5)
        else:
            assert "dist_" not in outputs
            np.testing.assert_allclose(outputs[""], cls_logits, atol=1e-5, rtol=1e-5)
    assert traced == [2, 4]


def test_evaluate_heads_trace_the_model_once_for_every_shard_count(monkeypatch):
    model = tiny_model()
    split_from_2_and_4_images(monkeypatch, model)
    traces, call_heads = [], model.call_heads

    def counted(images, training):
        traces.append(images.shape[0])
        return call_heads(images, training=training)

    monkeypatch.setattr(model, "call_heads", counted)
    heads = evaluate.outputs_function(model)
    for batch in (1, 3, 9):
        heads(random_images(batch=batch))
    assert traces == [None]  # one trace, of any batch size


def test_evaluate_heads_of_an_unknown_batch_size_are_not_split(monkeypatch):
    model = tiny_model()
    monkeypatch.setattr(cpu_predict, "SHARDS_FROM_GFLOP", ((2, 1e-9),))
    traced = _spy_on_shards(monkeypatch)
    heads = evaluate.outputs_function(model)
    spec = tf.TensorSpec([None, 32, 32, 3], tf.float32)
    logits = tf.function(lambda images: heads(images)["cls_"], input_signature=[spec])
    images = random_images(batch=4)
    expected, _ = model.call_heads(images, training=False)
    np.testing.assert_allclose(logits(images), expected, atol=1e-5, rtol=1e-5)
    assert traced == []


def test_evaluate_heads_of_a_small_model_are_not_split(monkeypatch):
    traced = _spy_on_shards(monkeypatch)
    heads = evaluate.outputs_function(tiny_model())
    for batch in (1, 64):
        assert heads(random_images(batch=batch))[""].shape[0] == batch
    assert traced == []


def test_an_eager_call_runs_the_compiled_predict_step(monkeypatch):
    model = tiny_model()
    split_from_2_and_4_images(monkeypatch, model)
    specs = counted_traces(monkeypatch)
    for batch in (3, 1, 9, 3, 2, 5):  # XLA, then shards; one trace of the model for all
        images = random_images(batch=batch)
        np.testing.assert_allclose(model(images), op_by_op(model, images), atol=1e-5, rtol=1e-5)
    spec = tf.TensorSpec([None, 32, 32, 3], tf.float32)
    assert specs == [spec]
    # The step itself: its first batch size, then any size (no retrace, no warning, per size).
    assert model._cpu_forwards._steps[spec].experimental_get_tracing_count() == 2


def test_eager_calls_stay_op_by_op_when_differentiated_training_or_asked(monkeypatch):
    model = tiny_model()
    specs = counted_traces(monkeypatch)
    images = tf.constant(random_images())
    with tf.GradientTape() as tape:
        tape.watch(images)
        total = tf.reduce_sum(model(images))
    gradient = tape.gradient(total, images)
    assert gradient is not None and float(tf.reduce_sum(tf.abs(gradient))) > 0
    cls_logits, dist_logits = model(images, training=True)  # both heads, as training sees them
    assert cls_logits.shape == dist_logits.shape == (2, 10)
    model.run_eagerly = True
    np.testing.assert_array_equal(model(images), op_by_op(model, images))
    model.run_eagerly = False
    tf.config.run_functions_eagerly(True)
    try:
        np.testing.assert_array_equal(model(images), op_by_op(model, images))
    finally:
        tf.config.run_functions_eagerly(False)
    assert specs == []


def test_eager_calls_see_stateless_values_and_quantized_weights():
    # Fixed weights: with some random ones an activation sits on an int8 rounding edge, and
    # the compiled and op-by-op paths round it apart (1e-3 in one CI run).
    keras.utils.set_random_seed(0)
    model = tiny_model()
    images = tf.constant(random_images())
    np.testing.assert_allclose(model(images), op_by_op(model, images), atol=1e-5, rtol=1e-5)
    zeros = [tf.zeros_like(variable) for variable in model.trainable_variables]
    others = [variable.value for variable in model.non_trainable_variables]
    stateless, _ = model.stateless_call(zeros, others, images)
    np.testing.assert_array_equal(stateless, np.zeros((2, 10), np.float32))  # zero heads
    np.testing.assert_allclose(model(images), op_by_op(model, images), atol=1e-5, rtol=1e-5)
    before = np.asarray(model(images))
    model.quantize("int8")
    quantized = np.asarray(op_by_op(model, images))
    assert np.abs(quantized - before).max() > 1e-6
    np.testing.assert_allclose(model(images), quantized, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(
        model(random_images(batch=3)), op_by_op(model, random_images(batch=3)), atol=1e-5, rtol=1e-5
    )


def test_a_saved_compiled_model_keeps_its_eager_step(monkeypatch, tmp_path):
    model = tiny_model()
    model.compile(optimizer="adamw")
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    specs = counted_traces(monkeypatch)
    images = random_images()
    np.testing.assert_array_equal(loaded(images), model(images))
    assert loaded._cpu_mode == model._cpu_mode == "cpu_predict"
    assert len(specs) == 2  # each model traced its own step
    loaded.compile(optimizer="adamw", jit_compile=True)  # an explicit choice: one XLA pass
    np.testing.assert_allclose(loaded(images), op_by_op(loaded, images), atol=1e-5, rtol=1e-5)
    assert loaded._cpu_mode == "xla"


def test_a_model_of_a_distribution_strategy_runs_its_ops_when_called(monkeypatch):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = tiny_model()
    specs = counted_traces(monkeypatch)
    images = tf.constant(random_images())
    with strategy.scope():
        np.testing.assert_array_equal(model(images), op_by_op(model, images))
    np.testing.assert_array_equal(model(images), op_by_op(model, images))
    assert specs == []


def test_predict_jit_compile_sets_inference_apart_from_training(tmp_path):
    model = tiny_model()
    model.compile(optimizer="adamw", jit_compile=True, predict_jit_compile="auto")
    images = random_images(batch=3)
    np.testing.assert_allclose(model(images), op_by_op(model, images), atol=1e-5, rtol=1e-5)
    assert model.jit_compile is True  # training and evaluation
    assert model._cpu_mode == "cpu_predict"
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.jit_compile is True and loaded._inference_mode() == "cpu_predict"
    loaded.compile(optimizer="adamw", jit_compile=True, predict_jit_compile=False)
    np.testing.assert_allclose(
        loaded.predict_on_batch(images), op_by_op(loaded, images), atol=1e-5, rtol=1e-5
    )
    assert loaded._cpu_mode == "graph"
    loaded.compile(optimizer="adamw", jit_compile=True)  # None again: as jit_compile
    assert loaded._inference_mode() == "xla"


def test_predict_jit_compile_rejects_other_values():
    with pytest.raises(UserInputError, match="Received: predict_jit_compile='xla'"):
        tiny_model().compile(optimizer="adamw", predict_jit_compile="xla")


def test_the_shards_follow_the_size_of_the_images_not_the_models(monkeypatch):
    """The shard thresholds read the FLOPs at the model's own size: a 224 px model given
    384 px images (3.3x the work an image) ran batches in one pass that want shards."""
    gflop = tiny_model().flops_per_image() / 1e9
    monkeypatch.setattr(cpu_predict, "SHARDS_FROM_GFLOP", ((2, 3.5 * gflop),))
    split, sharded = [], cpu_predict.sharded_forward

    def recorded(forward, images, shards):
        split.append((images.shape[1], shards))
        return sharded(forward, images, shards)

    monkeypatch.setattr(cpu_predict, "sharded_forward", recorded)
    for size in (32, 64):  # 3 images: 3x the model's FLOPs at 32 px, ~14x at 64 px
        model = tiny_model()  # Keras traces a second size as any size: the model's FLOPs
        images = random_images(batch=3, size=size)
        np.testing.assert_allclose(
            model.predict_on_batch(images), op_by_op(model, images), atol=1e-5, rtol=1e-5
        )
    assert split == [(64, 2)]
    assert model.flops_per_image(64) == model.flops_per_image((64, 64)) > 4 * gflop * 1e9
