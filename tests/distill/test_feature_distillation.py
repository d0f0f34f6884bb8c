"""Feature distillation ("locality guidance"): the loss, its gradients, the teacher's maps,
a plain inference model, exact resume."""

import io
import os
import subprocess
import sys
import textwrap
import zipfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from deit_keras.deploy.pretrained import create_model
from deit_keras.deploy.saving import save_model
from deit_keras.distill import regnet
from deit_keras.distill.feature_loss import (
    FeatureDistillation,
    copy_optimizer,
    default_blocks,
    feature_mse,
)
from deit_keras.distill.feature_teacher import FeatureTeacher, spread, stage_layers
from deit_keras.distill.teachers import (
    TeacherAdapter,
    build_finetune_teacher,
    build_small_cnn,
    build_teacher,
)
from deit_keras.errors import UserInputError
from deit_keras.testing import TINY, batches, compiled, tiny_model
from deit_keras.training import backup as backup_lib

STUDENT = "deit_tiny_distilled_patch16_224"


def _bilinear(maps, size):
    """numpy bilinear resize, half-pixel centres, edges clamped (PyTorch align_corners=False)."""

    def axis_weights(n_in, n_out):
        source = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        low = np.minimum(np.floor(source).astype(int), n_in - 1)
        high = np.minimum(low + 1, n_in - 1)
        matrix = np.zeros((n_out, n_in))
        matrix[np.arange(n_out), low] += 1 - (source - low)
        matrix[np.arange(n_out), high] += source - low
        return matrix

    rows, cols = axis_weights(maps.shape[1], size[0]), axis_weights(maps.shape[2], size[1])
    return np.einsum("hi,bijc,wj->bhwc", rows, maps, cols)


def _hand_loss(student_maps, teacher_maps):
    total = 0.0
    for s, t in zip(student_maps, teacher_maps, strict=True):
        size = (max(s.shape[1], t.shape[1]), max(s.shape[2], t.shape[2]))
        total += np.mean((_bilinear(s, size) - _bilinear(t, size)) ** 2)
    return total


def _compiled(teacher, distillation="hard", **kwargs):
    """A tiny DeiT⚗ compiled with `teacher` (eagerly: no tracing, seconds per test)."""
    return compiled(tiny_model(), teacher, distillation, run_eagerly=True, **kwargs)


def _teacher(size=32):
    keras.utils.set_random_seed(5)
    return TeacherAdapter(build_small_cnn(10, size, width=4), name="teacher")


def test_feature_mse_equals_numpy_resize_and_mse():
    rng = np.random.default_rng(0)
    student = [rng.normal(size=(2, 2, 2, 3)), rng.normal(size=(2, 5, 5, 4))]
    teacher = [rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 3, 3, 4))]  # up, then down
    got = feature_mse(
        [tf.constant(s, tf.float32) for s in student], [tf.constant(t, tf.float32) for t in teacher]
    )
    np.testing.assert_allclose(float(got), _hand_loss(student, teacher), rtol=1e-5)
    assert _bilinear(student[0], (2, 2)) == pytest.approx(student[0])  # the helper is exact


def test_step_loss_is_hard_loss_plus_weighted_feature_loss_of_the_adapted_maps():
    images, labels = batches(count=1, batch=4)
    model = _compiled(_teacher(), "hard", feature_weight=2.5)
    step = model.distillation_step
    features = step.features
    assert features.student_blocks == (0, 1) and len(features.teacher_layers) == 2
    total, cls_loss, dist_loss, _, _, _, feature_loss = step.compute_loss(
        model, images, labels, training=False
    )
    _, maps = model.forward_features(images, training=False, blocks=features.student_blocks)
    _, teacher_maps = features.teacher(images)
    adapted = []
    for conv, item in zip(features.adapters.convs, maps, strict=True):
        kernel, bias = (np.asarray(w) for w in conv.weights)
        adapted.append(np.asarray(item) @ kernel[0, 0] + bias)  # a 1x1 convolution
    expected = _hand_loss(adapted, [np.asarray(t) for t in teacher_maps])
    np.testing.assert_allclose(float(feature_loss), expected, rtol=1e-4)
    hard = 0.5 * float(cls_loss) + 0.5 * float(dist_loss)
    np.testing.assert_allclose(float(total), hard + 2.5 * expected, rtol=1e-4)


def test_gradients_reach_adapters_and_student_blocks_never_the_teacher():
    images, labels = batches(count=1, batch=4)
    teacher = _teacher()
    model = _compiled(teacher, "hard", feature_weight=1.0)
    features = model.distillation_step.features
    student_blocks = [v for v in model.trainable_variables if "block_" in v.path]
    watched = student_blocks + features.adapters.trainable_variables + teacher.weights
    with tf.GradientTape() as tape:
        *_, feature_loss = model.distillation_step.compute_loss(model, images, labels)
    gradients = tape.gradient(feature_loss, watched)
    blocks_grads = gradients[: len(student_blocks)]
    adapter_grads = gradients[len(student_blocks) : len(student_blocks) + 4]
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in adapter_grads)
    assert any(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in blocks_grads)
    assert all(g is None for g in gradients[len(student_blocks) + 4 :])
    # and a training step moves the adapters, never the teacher
    before = [np.array(w) for w in teacher.weights]
    adapters_before = [np.array(w) for w in features.adapters.weights]
    model.fit(images, labels, batch_size=4, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(before, teacher.weights, strict=True):
        np.testing.assert_array_equal(a, np.array(b))
    assert any(
        not np.array_equal(a, np.array(b))
        for a, b in zip(adapters_before, features.adapters.weights, strict=True)
    )


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "xla"])
def test_adapters_skip_the_steps_loss_scaling_skips(eager):
    """Under a LossScaleOptimizer an overflowing step moves nothing: the adapters stepped on
    it all the same (their optimizer ran ahead of the model's), unscaled by the scale the
    overflow had already halved."""
    images, labels = batches(count=1, batch=4)
    overflowing = images.copy()
    overflowing[0, 0, 0, 0] = np.inf  # every gradient non-finite, whatever the weights
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.AdamW(1e-3), initial_scale=2.0**10
    )
    model = tiny_model()
    model.compile(
        optimizer=optimizer,
        teacher=_teacher(),
        distillation="hard",
        feature_weight=1.0,
        run_eagerly=eager,
        jit_compile=not eager,
    )
    features = model.distillation_step.features
    adapters_before = [np.array(w) for w in features.adapters.weights]
    model.fit(overflowing, labels, batch_size=4, epochs=3, verbose=0, shuffle=False)
    assert int(optimizer.iterations) == 0 and float(optimizer.dynamic_scale) == 2.0**7
    assert int(features.optimizer.iterations) == 0
    for a, b in zip(adapters_before, features.adapters.weights, strict=True):
        np.testing.assert_array_equal(a, np.array(b))
    model.fit(images, labels, batch_size=4, epochs=1, verbose=0, shuffle=False)  # both step
    assert int(optimizer.iterations) == int(features.optimizer.iterations) == 1


def _last_of_each_resolution(cnn, names):
    """Each name's output is the last 4-D output (of more than 1x1) at its resolution."""
    sizes = [cnn.get_layer(name).output.shape[1] for name in names]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    order = [layer.name for layer in cnn.layers]
    for name, size in zip(names, sizes, strict=True):
        after = order[order.index(name) + 1 :]
        assert all(
            len(cnn.get_layer(other).output.shape) != 4
            or cnn.get_layer(other).output.shape[1] != size
            for other in after
        ), name


def test_teacher_stages_found_in_the_small_cnn():
    cnn = build_small_cnn(10, 32, width=4)
    names = stage_layers(TeacherAdapter(cnn))
    assert [cnn.get_layer(name).output.shape[1:] for name in names] == [
        (32, 32, 4),
        (16, 16, 8),
        (8, 8, 16),
    ]
    _last_of_each_resolution(cnn, names)
    assert spread(names, 3) == names and spread(names, 2) == [names[0], names[2]]
    assert default_blocks(12) == (0, 6, 11)  # the paper's blocks [0, 6, 11]


def test_teacher_stages_found_in_a_keras_application_and_its_fine_tuned_copy():
    adapter = build_teacher("mobilenetv3small", 10, 64, weights=None)
    names = stage_layers(adapter)
    cnn = adapter.teacher
    assert [cnn.get_layer(name).output.shape[1] for name in names] == [32, 16, 8, 4, 2]
    for name in names[1:-1]:  # a block's output, read by the next block's 1x1 expansion
        (consumer,) = [node.operation for node in cnn.get_layer(name)._outbound_nodes]
        assert consumer.kernel_size == (1, 1) and consumer.filters >= 2 * consumer.input.shape[-1]
    images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    logits, maps = FeatureTeacher(adapter, spread(names, 3))(images)
    np.testing.assert_allclose(logits, adapter(images), rtol=1e-5, atol=1e-5)
    assert [m.shape[1] for m in maps] == [32, 8, 2]
    # A fine-tuned teacher: the stages are found inside its nested backbone.
    tuned = build_finetune_teacher("mobilenetv3small", 10, 64, weights=None)
    tuned_names = stage_layers(tuned)
    assert len(tuned_names) == 5
    logits, maps = FeatureTeacher(tuned, tuned_names[-2:])(images)
    np.testing.assert_allclose(logits, tuned(images), rtol=1e-5, atol=1e-5)
    assert [m.shape[1] for m in maps] == [4, 2]


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "mobilenetv2",
            ["expanded_conv_project_BN", "block_2_add", "block_5_add", "block_12_add", "out_relu"],
        ),
        (
            "efficientnetb0",  # not the input's Normalization layer
            ["block1a_project_bn", "block2b_add", "block3b_add", "block5c_add", "top_activation"],
        ),
    ],
)
def test_inverted_residual_stages_are_block_outputs(name, expected):
    """An inverted-residual stage ends with its last block's output, not the next block's
    1x1 expansion activation, which alone feeds the strided depthwise conv."""
    adapter = build_teacher(name, 10, 64, weights=None)
    names = stage_layers(adapter)
    assert names == expected
    images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    logits, maps = FeatureTeacher(adapter, names)(images)
    np.testing.assert_allclose(logits, adapter(images), rtol=1e-5, atol=1e-5)
    sizes = [m.shape[1] for m in maps]
    assert sizes == sorted(set(sizes), reverse=True)


def test_convnext_stages_end_at_the_residual_adds():
    """ConvNeXt's blocks end in `x + y` operations (not layers) and its downsampling blocks
    are nested Sequentials: each stage's map is its last block's sum, not the layer-scaled
    branch before it (~1e-6 of it with fresh weights)."""
    adapter = build_teacher("convnexttiny", 10, 64, weights=None)
    names = stage_layers(adapter)
    cnn = adapter.teacher
    operations = {operation.name: operation for operation in cnn.operations}
    assert [type(operations[name]).__name__ for name in names] == ["Add"] * 4
    images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    logits, maps = FeatureTeacher(adapter, names)(images)
    np.testing.assert_allclose(logits, adapter(images), rtol=1e-5, atol=1e-5)
    assert [m.shape[1] for m in maps] == [16, 8, 4, 2]
    assert all(float(np.abs(m).mean()) > 0.1 for m in maps)


def test_stages_of_a_sequential_teacher():
    cnn = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(4, 3, padding="same", name="conv_a"),
            keras.layers.ReLU(name="relu_a"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(8, 3, padding="same", name="conv_b"),
            keras.layers.ReLU(name="relu_b"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    assert stage_layers(cnn) == ["relu_a", "relu_b"]
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    _, maps = FeatureTeacher(cnn, ["relu_a", "relu_b"])(images)
    assert [m.shape[1:] for m in maps] == [(32, 32, 4), (16, 16, 8)]


def test_regnet_stage_outputs_not_the_next_stages_first_conv():
    """A RegNet's next stage begins at the old resolution (a 1x1 conv before the strided
    one, beside the strided shortcut): the stage's output is its last block's, not that
    conv's (which the last layer of each resolution would be)."""
    adapter = build_teacher("regnety_002", 10, 64)
    depths = [stage.depth for stage in regnet.stages(regnet.CONFIGS["regnety_002"])]
    names = stage_layers(adapter)
    expected = ["stem_act"] + [f"s{i}_b{depth}_act3" for i, depth in enumerate(depths, 1)]
    assert names == expected
    images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    _, maps = FeatureTeacher(adapter, spread(names, 3))(images)
    assert [m.shape[1] for m in maps] == [32, 8, 2]


def test_stages_found_in_the_teachers_own_graph_only():
    """Another model called on the teacher's layers adds nodes to them; the stages stay."""
    cnn = build_small_cnn(10, 32, width=4)
    names = stage_layers(TeacherAdapter(cnn))
    first_conv = next(layer for layer in cnn.layers if layer.weights)
    images = keras.Input((32, 32, 3))
    keras.layers.AveragePooling2D(2)(first_conv(images))  # a smaller consumer elsewhere
    assert stage_layers(TeacherAdapter(cnn)) == names


def test_bad_blocks_and_layers_are_one_line_errors():
    with pytest.raises(UserInputError, match="feature_student_blocks"):
        _compiled(_teacher(), "hard", feature_weight=1.0, feature_blocks=[0, 5])
    with pytest.raises(UserInputError, match="no layer named nope"):
        compiled(
            tiny_model(),
            _teacher(),
            "hard",
            feature_weight=1.0,
            feature_blocks=[1],
            feature_layers=["nope"],
        )
    with pytest.raises(UserInputError, match="needs a teacher"):
        _compiled(_teacher(), "none", feature_weight=1.0)


def test_a_negative_weight_and_a_repeated_block_are_refused():
    with pytest.raises(UserInputError, match="feature_distill_weight must be >= 0"):
        FeatureDistillation(_teacher(), 32, 4, weight=-1.0)
    with pytest.raises(UserInputError, match="distinct block indices"):
        FeatureDistillation(_teacher(), 32, 4, student_blocks=[1, 1])


def test_blocks_given_in_any_order_match_the_teacher_stages_shallow_to_deep():
    teacher = _teacher()
    features = FeatureDistillation(teacher, 32, 4, student_blocks=[3, 0])
    assert features.student_blocks == (0, 3)
    assert list(features.teacher_layers) == spread(stage_layers(teacher), 2)


def test_one_block_matches_the_deepest_stage():
    names = stage_layers(_teacher())
    assert spread(names, 1) == [names[-1]]


def test_the_adapters_optimizer_is_a_copy_without_ema_or_loss_scaling():
    inner = keras.optimizers.AdamW(2e-3, weight_decay=0.07, use_ema=True)
    copy = copy_optimizer(keras.optimizers.LossScaleOptimizer(inner))
    assert type(copy) is keras.optimizers.AdamW and not copy.use_ema
    assert float(copy.learning_rate) == pytest.approx(2e-3) and copy.weight_decay == 0.07


def _file_layout(path):
    """`(name, shape)` of every array in a `.keras` file's weights, optimizer state included."""
    with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as handle:
        found = []
        with h5py.File(io.BytesIO(handle.read()), "r") as weights:
            weights.visititems(
                lambda name, item: (
                    found.append((name, item.shape)) if isinstance(item, h5py.Dataset) else None
                )
            )
    return sorted(found)


def test_inference_model_of_a_feature_distilled_run_is_a_plain_deit(tmp_path):
    images, labels = batches(count=2, batch=4)
    keras.utils.set_random_seed(0)
    distilled = _compiled(_teacher(), "hard", feature_weight=2.5)
    distilled.fit(images, labels, batch_size=4, epochs=1, verbose=0, shuffle=False)
    plain = _compiled(_teacher(), "hard")
    plain.fit(images, labels, batch_size=4, epochs=1, verbose=0, shuffle=False)

    def layout(model):
        return [(v.path, tuple(v.shape)) for v in model.weights]

    assert layout(distilled) == layout(plain)
    path = str(tmp_path / "student.keras")
    save_model(distilled, path)
    plain_path = str(tmp_path / "plain.keras")
    save_model(plain, plain_path)
    assert _file_layout(path) == _file_layout(plain_path)  # weights and optimizer state
    assert any("optimizer" in key for key, _ in _file_layout(path))
    loaded = create_model(STUDENT, pretrained=path, num_classes=10, **TINY)
    assert type(loaded).__name__ == "DeiT" and layout(loaded) == layout(tiny_model())
    np.testing.assert_allclose(loaded(images[:2]), distilled(images[:2]), rtol=1e-5, atol=1e-5)


def test_backup_resume_with_adapters_is_exact(tmp_path):
    images, labels = batches(count=2, batch=4)
    backup_dir = str(tmp_path / "backup")

    def run(epochs, with_backup=False):
        keras.utils.set_random_seed(0)
        model = _compiled(_teacher(), "hard", feature_weight=2.5)
        callbacks, initial = [], 0
        if with_backup:
            backup = backup_lib.AtomicBackupAndRestore(backup_dir)
            initial = backup.resume(model)[0]
            callbacks = [backup]
        model.fit(
            images,
            labels,
            batch_size=4,
            epochs=epochs,
            initial_epoch=initial,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
        )
        return model

    straight = run(2)
    run(1, with_backup=True)  # "crashes" after one epoch
    assert os.path.exists(os.path.join(backup_dir, "epoch-00001", "adapters.weights.h5"))
    resumed = run(2, with_backup=True)
    adapters, adapters_straight = (m.distillation_step.features for m in (resumed, straight))
    assert int(adapters.optimizer.iterations) == int(adapters_straight.optimizer.iterations) == 4
    pairs = [
        (resumed.get_weights(), straight.get_weights()),
        (adapters.adapters.get_weights(), adapters_straight.adapters.get_weights()),
        (adapters.optimizer.variables, adapters_straight.optimizer.variables),
        (resumed.optimizer.variables, straight.optimizer.variables),
    ]
    for got, expected in pairs:
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-6)
    # A plain run's backup cannot resume a feature-distilled one (no adapters in it).
    plain = _compiled(_teacher(), "hard")
    backup_lib.Backup(str(tmp_path / "plain")).save(plain, 1)
    with pytest.raises(backup_lib.BackupMismatchError, match="adapters"):
        backup_lib.Backup(str(tmp_path / "plain")).restore(straight)


MIRRORED_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np, tensorflow as tf
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from deit_keras.distill.teachers import TeacherAdapter, build_small_cnn
    from deit_keras.testing import batches, tiny_model
    from deit_keras.training.optim import create_optimizer
    images, labels = batches(count=1, batch=8)
    def step(strategy, optimizer_kind):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            teacher = TeacherAdapter(build_small_cnn(10, 32, width=4))
            optimizer = create_optimizer(
                base_lr=1e-3, global_batch_size=512, steps_per_epoch=3, epochs=2,
                warmup_epochs=0)
            if optimizer_kind == "loss_scale":  # what mixed_float16 compiles with
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            model = tiny_model()
            model.compile(optimizer=optimizer, teacher=teacher, distillation="hard",
                          feature_weight=2.5, jit_compile=False)
        history = model.fit(images, labels, batch_size=8, epochs=1, shuffle=False, verbose=0)
        adapters = model.distillation_step.features.adapters
        return history.history, model.get_weights() + adapters.get_weights()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    for kind in sys.argv[1:]:  # one process for the cases: TensorFlow starts once
        one, weights_one = step(tf.distribute.OneDeviceStrategy("/cpu:0"), kind)
        two, weights_two = step(strategy, kind)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(weights_one, weights_two))
        print("RESULT", kind, one["feature_loss"], two["feature_loss"], diff)
        assert one["feature_loss"][0] > 0
        assert abs(one["feature_loss"][0] - two["feature_loss"][0]) < 1e-5, kind
        assert abs(one["loss"][0] - two["loss"][0]) < 1e-5, kind
        assert diff < 1e-5, (kind, diff)
""")


def test_mirrored_two_replicas_match_one_device():
    """Two replicas of 4 train student and adapters as one device on the batch of 8. Under
    a LossScaleOptimizer the adapters' skip-on-overflow cond held a merge_call: the first
    step raised."""
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, "plain", "loss_scale"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    said = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("RESULT")]
    assert said == ["plain", "loss_scale"], result.stdout
