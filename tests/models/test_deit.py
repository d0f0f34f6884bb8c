import keras
import numpy as np
import pytest
import tensorflow as tf

import deit_keras
from deit_keras.errors import UserInputError
from deit_keras.testing import hf_reference, op_by_op, random_images, tiny_model


def test_list_models_has_the_timm_names():
    deit = {
        f"deit_{size}{tag}_patch16_224"
        for size in ("tiny", "small", "base")
        for tag in ("", "_distilled")
    } | {"deit_base_patch16_384", "deit_base_distilled_patch16_384"}
    sizes = ("small", "medium", "base", "large")
    deit3 = {f"deit3_{size}_patch16_{px}" for size in sizes for px in (224, 384)} - {
        "deit3_medium_patch16_384"
    } | {"deit3_huge_patch14_224"}
    cait = (
        {f"cait_{size}_{px}" for size in ("xxs24", "xxs36") for px in (224, 384)}
        | {f"cait_{size}_384" for size in ("xs24", "s24", "s36", "m36")}
        | {"cait_s24_224", "cait_m48_448"}
    )
    in22k = {f"{name}.fb_in22k_ft_in1k" for name in deit3}
    assert set(deit_keras.list_models()) == deit | deit3 | in22k | cait


def test_unknown_model_names_the_nearest_valid_ones():
    with pytest.raises(ValueError, match="did you mean deit3_huge_patch14_224, .*list_models"):
        deit_keras.create_model("deit_huge_patch16_224")


def test_image_size_must_divide_into_patches():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        deit_keras.create_model("deit_tiny_patch16_224", image_size=100)


def test_distilled_outputs_in_training_and_inference():
    model = tiny_model(distilled=True)
    images = random_images()
    cls_logits, dist_logits = model(images, training=True)
    assert tuple(cls_logits.shape) == tuple(dist_logits.shape) == (2, 10)
    cls_logits, dist_logits = model.call_heads(images, training=False)
    np.testing.assert_allclose(model(images), (cls_logits + dist_logits) / 2, atol=1e-6)
    # the heads really differ, so the mean is not trivially either of them
    assert np.abs(cls_logits - dist_logits).max() > 1e-3


def test_non_distilled_returns_single_logits():
    model = tiny_model(distilled=False)
    assert tuple(model(random_images(), training=True).shape) == (2, 10)
    assert model.head_dist is None


def test_stochastic_depth_rates_rise_linearly():
    model = tiny_model(depth=5, drop_path_rate=0.2)
    np.testing.assert_allclose(
        [block.drop_path.rate for block in model.blocks], [0.0, 0.05, 0.1, 0.15, 0.2]
    )


def test_num_classes_zero_returns_features():
    model = tiny_model(num_classes=0)
    assert tuple(model(random_images()).shape) == (2, 32)


def test_a_headless_backbone_gives_its_pooled_features_in_training_too():
    """A distilled backbone (num_classes=0) called with training=True gave the two tokens'
    features as a tuple (the two heads' logits' form), so `head(backbone(x, training=True))`
    in a custom loop failed."""
    model = tiny_model(num_classes=0, drop_path_rate=0.0)
    images = random_images()
    features = model(images, training=True)
    assert tuple(features.shape) == (2, 32)
    np.testing.assert_allclose(features, model(images, training=False), atol=1e-5)


def test_a_headless_backbone_gives_float32_features_under_mixed_precision_as_logits_are():
    """Its features came out in bfloat16, where a model with heads gives float32 logits
    (Keras' mixed-precision guide: outputs in float32, for the loss)."""
    model = tiny_model(num_classes=0, dtype="mixed_bfloat16")
    assert keras.backend.standardize_dtype(model(random_images()).dtype) == "float32"
    assert model(keras.Input((32, 32, 3))).dtype == "float32"  # as a functional model's


def test_forward_features_blocks_count_from_the_end_keep_their_order_and_refuse_others():
    """`blocks=[-1]` or an index past the last block returned no maps and no error, `[1, 0]`
    came back in block order, and with `return_attention_scores` the maps were dropped."""
    model = tiny_model()
    images = random_images()
    _, (last,) = model.forward_features(images, blocks=[-1])
    _, (second, first) = model.forward_features(images, blocks=[1, 0])
    _, (first_again,) = model.forward_features(images, blocks=[0])
    np.testing.assert_array_equal(last, second)
    np.testing.assert_array_equal(first, first_again)
    assert not np.allclose(first, second)
    for blocks in ([2], [-3], 1):
        with pytest.raises(ValueError, match="blocks"):
            model.forward_features(images, blocks=blocks)
    with pytest.raises(ValueError, match="one at a time"):
        model.forward_features(images, blocks=[0], return_attention_scores=True)


def _tiny(family):
    if family == "deit":
        return tiny_model()
    keras.utils.set_random_seed(0)
    return deit_keras.models.build_model(
        "cait_xxs24_224", num_classes=5, image_size=32, patch_size=8, embed_dim=16, depth=2,
        num_heads=2,
    )  # fmt: skip


@pytest.mark.parametrize("family", ["deit", "cait"])
def test_forward_features_on_a_keras_input_is_a_functional_backbone_of_any_size(family, tmp_path):
    """On a symbolic `keras.Input`, `forward_features` failed with `blocks=` (a reshape),
    attention scores ("Iterating over a symbolic KerasTensor") and an open image size
    ("NoneType // int"): no functional model of the maps for a detection head."""
    model = _tiny(family)
    inputs = keras.Input((None, None, 3))
    tokens, maps = model.forward_features(inputs, blocks=[-1, 0])
    _, attentions = model.forward_features(inputs, return_attention_scores=True)
    # The model three times over (as itself too): one model, saved and loaded once.
    backbone = keras.Model(inputs, [model(inputs), tokens, *maps, *attentions])
    assert len(backbone.trainable_weights) == len(model.trainable_weights)
    backbone.save(tmp_path / "backbone.keras")
    loaded = keras.models.load_model(tmp_path / "backbone.keras")
    for size in (32, 48):
        images = random_images(size=size)
        tokens, maps = model.forward_features(images, blocks=[-1, 0])
        _, attentions = model.forward_features(images, return_attention_scores=True)
        expected = [op_by_op(model, images), tokens, *maps, *attentions]
        assert tuple(maps[0].shape) == (2, size // 8, size // 8, model.embed_dim)
        for outputs in (backbone(images), loaded(images)):
            for output, wanted in zip(outputs, expected, strict=True):
                np.testing.assert_allclose(output, wanted, atol=1e-5)
    with pytest.raises(ValueError, match="float images"):
        model.forward_features(keras.Input((32, 32, 3), dtype="uint8"))
    with pytest.raises(ValueError, match="blocks"):
        model.forward_features(inputs, blocks=[2])
    with pytest.raises(UserInputError, match="^forward_features returns .* one at a time"):
        model.forward_features(inputs, blocks=[0], return_attention_scores=True)
    # The heads as nodes of their own saved their weights inside the model only.
    with pytest.raises(UserInputError, match="forward_heads takes tensors"):
        model.call_heads(inputs)
    open_channels = model.forward_features(keras.Input((None, None, None)), blocks=[0])
    assert tuple(open_channels[1][0].shape) == (None, None, None, model.embed_dim)


def test_keras_round_trip_gives_identical_logits(tmp_path):
    model = tiny_model(drop_path_rate=0.1)
    images = random_images()
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, deit_keras.DeiT)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded(images), model(images))


def test_a_frozen_backbone_in_a_users_model_stays_frozen_when_loaded_or_cloned(tmp_path):
    """`from_config` made the layers trainable again (Keras' `trainable = False` on TF
    returns early when the flag is already False): fine-tuning the loaded model trained
    the backbone, and its saved optimizer state (the head's) did not fit."""
    backbone = tiny_model(num_classes=0)
    backbone.trainable = False
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Dense(3)(backbone(inputs, training=False)))
    assert len(model.trainable_weights) == 2
    path = str(tmp_path / "frozen.keras")
    model.save(path)
    for rebuilt in (keras.models.load_model(path), keras.models.clone_model(model)):
        assert len(rebuilt.trainable_weights) == 2, [v.path for v in rebuilt.trainable_weights]
        inner = rebuilt.layers[1]
        assert not inner.trainable and not any(layer.trainable for layer in inner.layers)


def test_saved_model_export_gives_same_logits(tmp_path):
    model = tiny_model()
    images = random_images()
    model.export(str(tmp_path / "export"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "export"))
    np.testing.assert_allclose(served.serve(images), op_by_op(model, images), atol=1e-5)


def test_onnx_export_runs_in_onnxruntime_with_the_same_logits(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = tiny_model()
    images = random_images()
    path = str(tmp_path / "model.onnx")
    model.export(path, format="onnx", verbose=False)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: images})
    np.testing.assert_allclose(logits, op_by_op(model, images), atol=1e-5)


def test_onnx_export_of_a_mixed_precision_model_is_its_float32_copy(tmp_path):
    """tf2onnx wrote the bfloat16 casts into a file ONNX Runtime refused (`InvalidGraph`)."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from deit_keras.models import precision

    model = tiny_model(dtype="mixed_bfloat16")
    images = random_images()
    path = str(tmp_path / "model.onnx")
    model.export(path, format="onnx", verbose=False)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: images})
    float32 = precision.with_dtype_policy(model, "float32")
    np.testing.assert_allclose(logits, op_by_op(float32, images), atol=1e-5)


def test_uint8_images_get_a_one_line_error_naming_preprocess():
    model = tiny_model()
    pixels = np.zeros((1, 32, 32, 3), "uint8")
    with pytest.raises(ValueError, match=r"data.preprocess\(.*Received: dtype=uint8") as error:
        model(pixels)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="Received: dtype=uint8"):
        model.predict_on_batch(pixels)


def test_init_follows_reference():
    model = tiny_model()
    block = model.blocks[0]
    assert np.all(keras.ops.convert_to_numpy(block.attn.qkv.bias) == 0)
    assert np.all(keras.ops.convert_to_numpy(block.norm1.gamma) == 1)
    kernel = keras.ops.convert_to_numpy(
        deit_keras.create_model("deit_tiny_patch16_224").blocks[0].mlp.fc1.kernel
    )
    assert abs(kernel.std() - 0.02) < 0.002  # std 0.02 as the reference
    assert block.norm1.epsilon == 1e-6


REFERENCE_PARAMS = {  # the paper's Table 1, in millions
    "deit_tiny_patch16_224": 5.7,
    "deit_small_patch16_224": 22.1,
    "deit_base_patch16_224": 86.6,
    "deit_tiny_distilled_patch16_224": 5.9,
    "deit_small_distilled_patch16_224": 22.4,
    "deit_base_distilled_patch16_224": 87.3,
}


@pytest.mark.parametrize(
    "name", sorted(REFERENCE_PARAMS) + ["deit_base_patch16_384", "deit_base_distilled_patch16_384"]
)
def test_parameter_count_matches_reference(name):
    reference = sum(p.numel() for p in hf_reference(name).parameters())
    ours = deit_keras.create_model(name).count_params()
    assert ours == reference
    if name in REFERENCE_PARAMS:
        assert round(ours / 1e6, 1) == REFERENCE_PARAMS[name]


def test_an_inference_model_carries_no_training_state():
    model = tiny_model()
    assert model.distillation_step is None and model.metrics == [] and model.teacher is None
    with pytest.raises(ValueError, match="must be compiled"):
        model.train_step((random_images(), np.eye(10, dtype="float32")[:2]))


def test_compile_takes_the_label_loss_and_rejects_metrics():
    model = tiny_model(distilled=False)
    with pytest.raises(ValueError, match="Received: metrics="):
        model.compile(optimizer="adamw", metrics=["accuracy"])
    model.compile(optimizer="adamw", loss=keras.losses.MeanSquaredError())
    images, targets = random_images(), np.eye(10, dtype="float32")[:2]
    total = model.distillation_step.compute_loss(model, images, targets, training=False)[0]
    expected = keras.losses.MeanSquaredError()(targets, model(images))
    np.testing.assert_allclose(float(total), float(expected), rtol=1e-6)


def test_one_class_with_a_softmax_loss_and_images_without_labels_are_refused():
    """One class: the loss was 0 and top-1 1.0 whatever the model did. No labels: Keras'
    `Invalid dtype: object` from inside the step."""
    from keras.layers import Dense

    from deit_keras.distill import BinaryCrossEntropy

    one_class = tiny_model(num_classes=1)
    for loss in (
        None,
        keras.losses.CategoricalCrossentropy(from_logits=True),
        keras.losses.CategoricalFocalCrossentropy(from_logits=True),
    ):
        with pytest.raises(UserInputError, match="one class: a softmax .* num_classes=2"):
            one_class.compile(optimizer="adamw", loss=loss)
    teacher = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), Dense(1)])
    with pytest.raises(UserInputError, match="one class: the hard distillation term"):
        one_class.compile(loss=BinaryCrossEntropy(), teacher=teacher, distillation="hard")
    # A file saved compiled by a version that took it still loads, uncompiled.
    two_classes = tiny_model(num_classes=2)
    two_classes.compile(optimizer="adamw")
    one_class.compile_from_config(two_classes.get_compile_config())
    assert one_class.optimizer is None
    one_class.compile(optimizer=keras.optimizers.SGD(0.1), loss=BinaryCrossEntropy())
    images = random_images(batch=4)
    logs = one_class.train_on_batch(images, np.array([[0.0], [1.0], [1.0], [0.0]]))
    assert np.isfinite(logs[0]) and logs[0] > 0  # a sigmoid over one logit learns

    model = tiny_model()
    model.compile(optimizer="adamw")
    with pytest.raises(UserInputError, match="labelled images: give .*Received: images only"):
        model.fit(images, epochs=1, verbose=0)
    with pytest.raises(UserInputError, match="Received: images only"):
        model.evaluate(tf.data.Dataset.from_tensor_slices(images).batch(2), verbose=0)


def test_each_variant_carries_its_eval_preprocessing_through_save(tmp_path):
    assert deit_keras.get_variant("deit_base_patch16_384").preprocessing.crop_pct == 1.0
    assert deit_keras.create_model("deit_tiny_patch16_224").preprocessing.crop_pct == 0.875
    model = tiny_model(crop_pct=0.8)
    assert model.preprocessing == deit_keras.Preprocessing(crop_pct=0.8)
    path = str(tmp_path / "m.keras")
    model.save(path)
    assert keras.models.load_model(path).preprocessing == model.preprocessing
    with pytest.raises(ValueError, match="crop_pct"):
        tiny_model(crop_pct=1.5)


def test_models_and_teachers_take_nhwc_whatever_keras_image_data_format_says(tmp_path):
    """`keras.config.set_image_data_format("channels_first")` (or keras.json): no DeiT could
    be built or loaded (the patch conv read the global format), nor a CNN teacher."""
    from deit_keras.distill import build_small_cnn
    from deit_keras.distill.regnet import regnety

    images = random_images()
    model = tiny_model()
    model.save(tmp_path / "m.keras")
    keras.config.set_image_data_format("channels_first")
    try:
        loaded = keras.models.load_model(tmp_path / "m.keras")
        np.testing.assert_allclose(loaded(images), model(images), rtol=1e-5, atol=1e-6)
        assert tuple(tiny_model()(images).shape) == (2, 10)
        assert tuple(build_small_cnn(10, 32)(images).shape) == (2, 10)
        assert tuple(regnety("regnety_002", num_classes=10, image_size=32)(images).shape) == (2, 10)
    finally:
        keras.config.set_image_data_format("channels_last")


def test_a_distilled_deit_inside_another_model_trains_both_heads():
    """`Sequential([..., deit])` is built for one output: a training call returned the two
    heads and Keras kept the first, so `head_dist` never trained while inference averaged it
    in. Inside another model a training call gives the mean; called directly, both heads."""
    model = tiny_model()
    images = random_images(batch=8)
    labels = np.eye(10, dtype="float32")[np.arange(8) % 10]
    wrapped = keras.Sequential([keras.Input((32, 32, 3)), model])
    wrapped.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    before = [model.head.kernel.numpy(), model.head_dist.kernel.numpy()]
    wrapped.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    for old, head in zip(before, (model.head, model.head_dist), strict=True):
        assert not np.allclose(old, head.kernel.numpy())
    assert tuple(wrapped(images, training=True).shape) == (8, 10)
    cls_logits, dist_logits = model(images, training=True)
    assert tuple(cls_logits.shape) == tuple(dist_logits.shape) == (8, 10)


def test_a_stateless_training_call_leaves_no_keras_call_context_behind():
    """Reading whether the model is called inside another made Keras' call context, which a
    `stateless_call` (it skips `__call__`) left behind: the next distilled DeiT's training
    call then gave the mean, and a later call without `training` kept training's dropout."""
    from keras.src.backend.common import global_state

    first, second = tiny_model(), tiny_model()
    images = random_images()
    outputs, _ = first.stateless_call(
        first.trainable_variables, first.non_trainable_variables, images, training=True
    )
    assert isinstance(outputs, tuple) and len(outputs) == 2
    assert global_state.get_global_attribute("current_call_ctx") is None
    assert isinstance(second(images, training=True), tuple)


def test_one_class_soft_distillation_is_refused_too():
    """A softmax over one class is 1 for the teacher and the student: the soft term is 0."""
    from deit_keras.distill import BinaryCrossEntropy

    one_class = tiny_model(num_classes=1)
    teacher = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    with pytest.raises(UserInputError, match="one class: the soft distillation term"):
        one_class.compile(loss=BinaryCrossEntropy(), teacher=teacher, distillation="soft")
