"""Fine-tuning at a higher resolution, as the paper's 224 -> 384 step, on a tiny model."""

import dataclasses

import numpy as np
import pytest

from deit_keras.deploy import checkpoints, saving
from deit_keras.layers import resample_position_embeddings
from deit_keras.testing import random_images, tiny_model
from deit_keras.training.config import TrainConfig
from deit_keras.training.runner import _make_student, run_training


def finetune_config(path, image_size, num_classes=10):
    config = TrainConfig(
        model="deit_tiny_distilled_patch16_224",
        image_size=image_size,
        finetune=path,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        drop_path=0.0,
    )
    return config, num_classes


def run_on_digits(config, tmp_path, **changes):
    """`run_training` of `config` for one epoch on digits, labels only, no warmup, no export."""
    config = dataclasses.replace(
        config,
        dataset="digits",
        data_dir=str(tmp_path / "tfds"),
        epochs=1,
        warmup_epochs=0,
        repeated_aug=1,
        distillation_type="none",
        model_dir=str(tmp_path / "run"),
        output=str(tmp_path / "finetuned.keras"),
        export_savedmodel=False,
        progress="none",
        **changes,
    )
    return run_training(config)


@pytest.fixture
def saved_source(tmp_path):
    """A tiny distilled model saved as `.keras`: `(model, path)`."""
    source = tiny_model()
    path = str(tmp_path / "source.keras")
    saving.save_model(source, path)
    return source, path


def test_same_size_finetune_keeps_outputs(saved_source):
    source, path = saved_source
    config, classes = finetune_config(path, 32)
    model = _make_student(config, classes)
    images = random_images()
    np.testing.assert_allclose(model(images), source(images), atol=1e-6)


def test_larger_grid_resamples_only_the_position_embeddings(saved_source):
    source, path = saved_source
    config, classes = finetune_config(path, 48)
    model = _make_student(config, classes)
    assert model.image_size == 48 and model.grid_size == 6
    before, after = checkpoints.state_dict_of(source), checkpoints.state_dict_of(model)
    expected = resample_position_embeddings(before["pos_embed"], (6, 6), 2)
    np.testing.assert_allclose(after["pos_embed"], expected, atol=1e-6)
    for key in before.keys() - {"pos_embed"}:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)


def test_new_class_count_gets_fresh_heads(saved_source):
    source, path = saved_source
    config, _ = finetune_config(path, 48)
    model = _make_student(config, 7)
    assert model.head.kernel.shape == (32, 7)
    np.testing.assert_array_equal(model.tokens.cls_token.numpy(), source.tokens.cls_token.numpy())


def test_a_saved_models_head_rows_follow_its_class_names(tmp_path):
    """The same count of classes renamed or reordered (a class folder renamed changes the
    sorted order) kept every head row where it was, under the wrong names."""
    source = tiny_model(num_classes=4)
    for head in (source.head, source.head_dist):
        head.bias.assign(np.arange(1.0, 5.0))  # rows told apart by their biases too
    path = str(tmp_path / "named.keras")
    saving.save_model(source, path, class_names=["cat", "dog", "emu", "fox"])
    config, _ = finetune_config(path, 32)
    kernel, bias = source.head.kernel.numpy(), source.head.bias.numpy()
    model = _make_student(config, 4, ["fox", "cat", "dog", "emu"])
    np.testing.assert_array_equal(model.head.kernel.numpy(), kernel[:, [3, 0, 1, 2]])
    np.testing.assert_array_equal(model.head.bias.numpy(), bias[[3, 0, 1, 2]])
    np.testing.assert_array_equal(
        model.head_dist.bias.numpy(), source.head_dist.bias.numpy()[[3, 0, 1, 2]]
    )
    renamed = _make_student(config, 4, ["ant", "cat", "dog", "emu"])  # "fox" -> "ant"
    np.testing.assert_array_equal(renamed.head.kernel.numpy()[:, 1:], kernel[:, :3])
    assert not np.isclose(renamed.head.kernel.numpy()[:, :1], kernel).all(axis=0).any()
    assert renamed.head.bias.numpy()[0] == 0  # a fresh row
    grown = _make_student(config, 5, ["cat", "dog", "emu", "fox", "gnu"])  # a class added
    np.testing.assert_array_equal(grown.head.kernel.numpy()[:, :4], kernel)
    same = _make_student(config, 4, ["cat", "dog", "emu", "fox"])
    np.testing.assert_array_equal(same.head.kernel.numpy(), kernel)


def test_finetune_run_at_the_new_size(saved_source, tmp_path):
    source, path = saved_source
    config, _ = finetune_config(path, 48)
    results = run_on_digits(
        config,
        tmp_path,
        batch_size=32,
        steps_per_epoch=3,
        lr=5e-6,
        min_lr=5e-6,
        weight_decay=1e-8,
    )
    model, _ = saving.load_model(results["saved_model"])
    assert model.image_size == 48 and results["epochs"] == 1
    assert not np.allclose(model.head.kernel.numpy(), source.head.kernel.numpy())  # it trained


def test_first_stage_run_trains_the_heads_only_with_accumulation(saved_source, tmp_path):
    source, path = saved_source
    config, _ = finetune_config(path, 32)
    results = run_on_digits(
        config,
        tmp_path,
        batch_size=16,
        steps_per_epoch=4,
        grad_accum_steps=2,
        layer_decay=0.65,
        freeze="backbone",
    )
    model, _ = saving.load_model(results["saved_model"])
    for before, after in zip(source.weights, model.weights, strict=True):
        moved = not np.array_equal(before.numpy(), after.numpy())
        assert moved == ("head" in after.path), after.path
