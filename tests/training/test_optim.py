"""The DeiT learning-rate rule, warmup-cosine schedule and weight-decay exclusions."""

import logging
import math
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from deit_keras.distill.base_losses import BinaryCrossEntropy
from deit_keras.errors import UserInputError
from deit_keras.models.variants import build_model
from deit_keras.testing import batches, tiny_model
from deit_keras.training.config import TrainConfig
from deit_keras.training.optim import (
    NO_WEIGHT_DECAY,
    LayerDecayAdamW,
    LayerDecayLamb,
    WarmupCosine,
    create_optimizer,
    freeze_backbone,
    infer_depth,
    layer_id,
    scaled_learning_rate,
)
from deit_keras.training.runner import check_accumulation


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


def test_a_floor_above_the_scaled_peak_is_warned_of(caplog):
    """The 384 px fine-tuning recipe (lr = min_lr = 5e-6) at a batch of 32: the peak scaled
    to 3.1e-7, the floor not, and the "cosine decay" rose 16x without a word."""
    caplog.set_level(logging.WARNING)
    create_optimizer(base_lr=5e-6, min_lr=5e-6, global_batch_size=32, epochs=2, warmup_epochs=0)
    (warning,) = [r.getMessage() for r in caplog.records if "min_lr" in r.getMessage()]
    assert "min_lr=5e-06 is above the peak LR 3.13e-07" in warning and "rises" in warning
    caplog.clear()
    create_optimizer(base_lr=5e-6, min_lr=5e-6, global_batch_size=512, epochs=2)  # flat
    assert not [r for r in caplog.records if "min_lr" in r.getMessage()]


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


# === Layer-wise LR decay ===


def _one_step_changes(layer_decay):
    """Each trainable variable's change after one fit step (decay off for biases etc. as usual)."""
    keras.utils.set_random_seed(0)
    model = tiny_model(drop_path_rate=0.0)
    model.compile(
        optimizer=create_optimizer(
            base_lr=1e-2,
            global_batch_size=512,
            steps_per_epoch=1,
            epochs=2,
            warmup_epochs=0,
            layer_decay=layer_decay,
        ),
        jit_compile=False,
    )
    before = [v.numpy() for v in model.trainable_variables]
    images, labels = batches(count=1)
    model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    changes = [v.numpy() - b for v, b in zip(model.trainable_variables, before, strict=True)]
    return model, changes


def test_layer_scales_follow_timm():
    """timm's ids: 0 stem, 1..depth blocks, the final norm with the last block, depth+1 heads."""
    model = tiny_model()
    optimizer = create_optimizer(steps_per_epoch=2, epochs=2, layer_decay=0.6)
    optimizer.build(model.trainable_variables)
    depth = 2
    expected_ids = {"patch_embed": 0, "tokens": 0, "block_0": 1, "block_1": 2, "norm": 2}
    for variable in model.trainable_variables:
        part = variable.path.split("/")[1]
        expected = expected_ids.get(part, depth + 1)
        assert layer_id(variable.path, depth) == expected, variable.path
        assert optimizer.lr_scale(variable) == pytest.approx(0.6 ** (depth + 1 - expected))
    assert infer_depth(v.path for v in model.trainable_variables) == depth
    assert layer_id("deit/block_11/mlp/fc1/kernel", 12) == layer_id("deit/norm/gamma", 12) == 12
    assert layer_id("deit/head_dist/kernel", 12) == 13


@pytest.mark.parametrize("name", ["deit_tiny_distilled_patch16_224", "cait_xxs24_224"])
def test_layer_scales_equal_timms_param_groups(name):
    """Every variable's LR scale against timm's `param_groups_layer_decay` on the same model."""
    timm = pytest.importorskip("timm")
    from timm.optim._param_groups import param_groups_layer_decay

    reference = timm.create_model(name, pretrained=False, depth=3)
    scales = {}
    for group in param_groups_layer_decay(reference, weight_decay=0.05, layer_decay=0.75):
        for parameter in group["params"]:
            scales[id(parameter)] = group["lr_scale"]
    expected = sorted(scales[id(parameter)] for parameter in reference.parameters())
    model = build_model(name, depth=3)
    optimizer = create_optimizer(steps_per_epoch=2, epochs=2, layer_decay=0.75)
    optimizer.build(model.trainable_variables)
    ours = sorted(optimizer.lr_scale(v) for v in model.trainable_variables)
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_one_step_update_is_scaled_per_layer():
    decay = 0.5
    _, plain = _one_step_changes(1.0)
    model, scaled = _one_step_changes(decay)
    scales = {
        "patch_embed/projection/kernel": decay**3,
        "tokens/pos_embed": decay**3,
        "block_0/attn/qkv/kernel": decay**2,
        "block_1/mlp/fc2/kernel": decay,  # the last block
        "head/kernel": 1.0,
        "norm/gamma": decay,  # the final norm goes with the last block (timm)
    }
    for variable, change, reference in zip(model.trainable_variables, scaled, plain, strict=True):
        name = variable.path.split("/", 1)[1]
        scale = model.optimizer.lr_scale(variable)
        assert scale == pytest.approx(scales.get(name, scale))
        # atol: float32 steps of weights near 1 (norm gammas).
        np.testing.assert_allclose(change, reference * scale, rtol=1e-5, atol=1e-7, err_msg=name)
    assert max(np.abs(c).max() for c in scaled) > 1e-3  # it moved


def test_compiled_model_round_trip_keeps_the_optimizer(tmp_path):
    model = tiny_model()
    model.compile(
        optimizer=create_optimizer(
            base_lr=1e-3,
            global_batch_size=64,
            steps_per_epoch=10,
            epochs=3,
            layer_decay=0.65,
            depth=2,
            grad_accum_steps=2,
            clip_grad=1.0,
        )
    )
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.optimizer, LayerDecayAdamW)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    config = loaded.optimizer.get_config()
    assert (config["layer_decay"], config["depth"], config["gradient_accumulation_steps"]) == (
        0.65,
        2,
        2,
    )
    assert tuple(config["no_weight_decay"]) == NO_WEIGHT_DECAY
    assert config["learning_rate"]["config"]["total_steps"] == 15  # 3 epochs x 10 steps / 2
    # The decay exclusions come back with the config (keras' AdamW loses them).
    optimizer = loaded.optimizer
    skipped = {
        v.path.split("/")[-1]
        for v in loaded.trainable_variables
        if not optimizer._use_weight_decay(v)
    }
    assert skipped == set(NO_WEIGHT_DECAY)


# === Gradient accumulation ===


def _fixed_data(micro_batches=8, micro=4):
    """Fixed images and label-smoothed targets (so mean reductions are exercised)."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(micro_batches * micro, 32, 32, 3)).astype("float32")
    labels = np.eye(10, dtype="float32")[rng.integers(0, 10, len(images))] * 0.9 + 0.01
    return images, labels


def _train(batch, grad_accum_steps, epochs=2):
    """A distilled tiny DeiT (DeiT.train_step, hard distillation) after `epochs` of fit."""
    images, labels = _fixed_data()
    keras.utils.set_random_seed(0)
    teacher = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    teacher(images[:1])
    model = tiny_model(drop_path_rate=0.0)
    optimizer = create_optimizer(
        base_lr=2e-2,
        global_batch_size=batch,
        steps_per_epoch=len(images) // batch,
        epochs=epochs,
        warmup_epochs=1,
        layer_decay=0.7,
        depth=2,
        clip_grad=1.0,
        grad_accum_steps=grad_accum_steps,
    )
    model.compile(optimizer=optimizer, teacher=teacher, distillation="hard", jit_compile=False)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)
    history = model.fit(data, epochs=epochs, verbose=0)
    return model, history


def _max_diff(first, second):
    return max(float(np.abs(a - b).max()) for a, b in zip(first, second, strict=True))


def test_accumulated_micro_batches_equal_one_big_batch():
    """4 micro-batches of 4 per update == batches of 16: same weights, LR and update count."""
    big, big_history = _train(16, 1)
    accumulated, history = _train(4, 4)
    keras.utils.set_random_seed(0)
    start = tiny_model(drop_path_rate=0.0).get_weights()
    diff = _max_diff(big.get_weights(), accumulated.get_weights())
    moved = _max_diff(big.get_weights(), start)
    assert diff < 1e-5 and moved > 1e-2, (diff, moved)
    assert int(accumulated.optimizer.iterations) == int(big.optimizer.iterations) == 4
    np.testing.assert_allclose(history.history["lr"], big_history.history["lr"], rtol=1e-6)


def test_model_ema_steps_once_per_accumulated_update():
    """timm's ModelEma (official engine.py) steps once an optimizer update; Keras alone
    steps its average at every micro-batch, so N micro-batches decayed it N times."""
    decay = 0.9
    variable = keras.Variable(np.ones(3, "float32"), name="kernel")
    optimizer = create_optimizer(
        base_lr=0.1,
        global_batch_size=512,
        steps_per_epoch=8,
        epochs=4,
        warmup_epochs=0,
        weight_decay=0.0,
        model_ema=True,
        model_ema_decay=decay,
        grad_accum_steps=2,
    )
    optimizer.build([variable])
    rng = np.random.default_rng(0)
    average = None
    for micro_batch in range(8):
        gradient = tf.constant(rng.normal(size=3), tf.float32)
        optimizer.apply_gradients([(gradient, variable)])
        if micro_batch % 2 == 1:  # an update; Keras' average starts at the first one's weights
            weights = variable.numpy()
            average = weights if average is None else decay * average + (1 - decay) * weights
    assert int(optimizer.iterations) == 4
    optimizer.finalize_variable_values([variable])  # the model takes the average
    np.testing.assert_allclose(variable.numpy(), average, rtol=1e-6)


def test_schedule_counts_updates():
    optimizer = create_optimizer(
        base_lr=1e-3,
        global_batch_size=64,
        steps_per_epoch=10,
        epochs=3,
        warmup_epochs=1,
        grad_accum_steps=2,
    )
    schedule = optimizer.get_config()["learning_rate"]["config"]
    assert (schedule["total_steps"], schedule["warmup_steps"]) == (15, 5)
    assert schedule["peak_lr"] == pytest.approx(scaled_learning_rate(1e-3, 128))
    with pytest.raises(ValueError, match="grad_accum_steps=8"):
        create_optimizer(steps_per_epoch=3, epochs=2, grad_accum_steps=8)
    with pytest.raises(ValueError, match="Received: layer_decay=0"):
        LayerDecayAdamW(layer_decay=0.0)


MIRRORED_SCRIPT = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from deit_keras.testing import tiny_model
    from deit_keras.training.optim import create_optimizer
    rng = np.random.default_rng(0)
    images = rng.normal(size=(32, 32, 32, 3)).astype("float32")
    labels = np.eye(10, dtype="float32")[rng.integers(0, 10, 32)]
    def train(strategy, batch, accum):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = tiny_model(drop_path_rate=0.0)
            optimizer = create_optimizer(
                base_lr=2e-2, global_batch_size=batch, steps_per_epoch=32 // batch, epochs=2,
                warmup_epochs=1, layer_decay=0.7, depth=2, grad_accum_steps=accum,
            )
            model.compile(optimizer=optimizer, jit_compile=False)
        data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)
        model.fit(data, epochs=2, verbose=0)
        return model.get_weights()
    one = train(tf.distribute.OneDeviceStrategy("/cpu:0"), 16, 1)
    two = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), 16, 1)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(one, two, strict=True))
    print("RESULT", diff)
    assert diff < 1e-5, diff
""")


def test_mirrored_layer_decay_matches_one_device():
    """Layer decay on 2 replicas x 8 == one device, batches of 16."""
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RESULT" in result.stdout


# === Training the heads only ===


def test_freeze_backbone_trains_only_the_heads():
    model = freeze_backbone(tiny_model(drop_path_rate=0.0))
    model.compile(
        optimizer=create_optimizer(
            base_lr=1e-2, global_batch_size=512, steps_per_epoch=1, epochs=1, warmup_epochs=0
        ),
        jit_compile=False,
    )
    before = {v.path: v.numpy() for v in model.weights}
    images, labels = batches(count=1)
    model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    changed = {v.path.split("/")[1] for v in model.weights if not np.array_equal(v, before[v.path])}
    assert changed == {"head", "head_dist"}
    assert {v.path.split("/")[1] for v in model.trainable_variables} == {"head", "head_dist"}


def test_a_frozen_backbone_stays_frozen_through_a_keras_file(tmp_path):
    """The model's layers are rebuilt from its config: the frozen ones are named in it, so the
    reloaded model trains the heads only and takes its optimizer state, step count included."""
    model = freeze_backbone(tiny_model(drop_path_rate=0.0))
    optimizer = create_optimizer(
        base_lr=1e-2, global_batch_size=512, steps_per_epoch=1, epochs=4, warmup_epochs=2
    )
    model.compile(optimizer=optimizer, jit_compile=False)
    images, labels = batches(count=1)
    model.fit(images, labels, batch_size=4, epochs=2, verbose=0)
    model.save(tmp_path / "frozen.keras")
    loaded = keras.models.load_model(tmp_path / "frozen.keras")
    assert [v.path for v in loaded.trainable_variables] == [
        v.path for v in model.trainable_variables
    ]
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 2
    for trained in (model, loaded):
        trained.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    for mine, theirs in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_allclose(theirs, mine, rtol=0, atol=1e-6, err_msg=mine.path)


def test_accumulation_on_several_replicas_is_refused_in_one_line():
    config = TrainConfig(grad_accum_steps=4, strategy="mirrored")
    check_accumulation(config, 1)
    with pytest.raises(ValueError, match="grad_accum_steps=4 needs a single replica.*has 2"):
        check_accumulation(config, 2)


def test_scale_lr_false_takes_the_base_lr_as_it_is():
    scaled = create_optimizer(base_lr=4e-3, global_batch_size=64, steps_per_epoch=2, epochs=2)
    as_is = create_optimizer(
        base_lr=4e-3, global_batch_size=64, scale_lr=False, steps_per_epoch=2, epochs=2
    )
    for optimizer, peak in ((scaled, 4e-3 * 64 / 512), (as_is, 4e-3)):
        schedule = optimizer.get_config()["learning_rate"]["config"]
        assert schedule["peak_lr"] == pytest.approx(peak)
    with pytest.raises(TypeError):
        create_optimizer(4e-3, 64)  # keyword arguments only


# === LAMB (DeiT III) ===


def test_lamb_is_built_with_the_adamw_exclusions():
    model = tiny_model()
    optimizer = create_optimizer(steps_per_epoch=2, epochs=2, opt="lamb", weight_decay=0.05)
    optimizer.build(model.trainable_variables)
    assert isinstance(optimizer, LayerDecayLamb) and optimizer.name == "lamb"
    assert (optimizer.epsilon, optimizer.beta_1, optimizer.beta_2) == (1e-8, 0.9, 0.999)
    skipped = {
        v.path.split("/")[-1]
        for v in model.trainable_variables
        if not optimizer._use_weight_decay(v)
    }
    decayed = {v.path.split("/")[-1] for v in model.trainable_variables} - skipped
    assert decayed == {"kernel"} and skipped == set(NO_WEIGHT_DECAY)
    with pytest.raises(UserInputError, match="opt must be one of"):
        create_optimizer(opt="sgd")


def test_lamb_first_step_by_hand():
    """timm Lamb / apex FusedLAMB: decay inside the trust ratio, excluded variables not adapted."""
    lr, wd, eps = 0.1, 0.5, 1e-8
    kernel = keras.Variable(np.array([[3.0, -4.0], [0.0, 12.0]], "float32"), name="kernel")
    bias = keras.Variable(np.array([1.0, -2.0], "float32"), name="bias")
    grads = [np.array([[0.1, 0.2], [-0.3, 0.4]], "float32"), np.array([0.5, -0.25], "float32")]
    optimizer = LayerDecayLamb(learning_rate=lr, weight_decay=wd, epsilon=eps, depth=0)
    optimizer.apply_gradients(zip([tf.constant(g) for g in grads], [kernel, bias], strict=True))
    # Step 1: m_hat = g, v_hat = g^2, so the Adam step is g / (|g| + eps), about sign(g).
    w = np.array([[3.0, -4.0], [0.0, 12.0]])
    update = grads[0] / (np.abs(grads[0]) + eps) + wd * w
    ratio = np.linalg.norm(w) / np.linalg.norm(update)  # 13 / |update|
    np.testing.assert_allclose(kernel.numpy(), w - lr * ratio * update, rtol=1e-5)
    plain = grads[1] / (np.abs(grads[1]) + eps)  # no decay, no trust ratio
    np.testing.assert_allclose(bias.numpy(), np.array([1.0, -2.0]) - lr * plain, rtol=1e-6)


def test_deit3_recipe_compile_round_trips(tmp_path):
    """LAMB and the binary cross-entropy come back with a saved model."""
    model = tiny_model()
    optimizer = create_optimizer(
        base_lr=4e-3, steps_per_epoch=4, epochs=2, opt="lamb", clip_grad=1.0, scale_lr=False
    )
    model.compile(optimizer=optimizer, loss=BinaryCrossEntropy(), jit_compile=False)
    optimizer.build(model.trainable_variables)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.optimizer, LayerDecayLamb)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.optimizer.get_config()["learning_rate"]["config"]["peak_lr"] == 4e-3
    base_loss = loaded.distillation_step.loss.cross_entropy
    assert isinstance(base_loss, BinaryCrossEntropy) and base_loss.target_threshold == 0.0
