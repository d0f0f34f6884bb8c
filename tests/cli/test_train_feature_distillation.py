"""`python -m deit_keras.train` with feature distillation: a tiny digits run end to end."""

import json
import subprocess

import numpy as np
import pytest

from deit_keras.deploy.pretrained import create_model
from deit_keras.deploy.saving import load_model
from deit_keras.distill.teachers import build_small_cnn
from deit_keras.errors import UserInputError
from deit_keras.testing import train_command
from deit_keras.training.config import TrainConfig


def test_tiny_feature_distilled_run_logs_the_feature_loss_and_saves_a_plain_deit(tmp_path):
    build_small_cnn(10, 16, width=4).save(tmp_path / "teacher.keras")  # untrained will do
    command = train_command(
        tmp_path,
        "run",
        "--distillation_type=hard",
        f"--teacher={tmp_path / 'teacher.keras'}",
        "--nojit_compile",
        "--feature_distillation",
        "--feature_distill_weight=2.5",
        "--epochs=2",
        "--steps_per_epoch=2",
        "--summary_every=0",
    )
    process = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    history = json.loads((tmp_path / "run" / "history.json").read_text())["epochs"]
    assert len(history) == 2
    assert all(record["feature_loss"] > 0 and "val_feature_loss" in record for record in history)
    assert (tmp_path / "run" / "backup" / "epoch-00002" / "adapters.weights.h5").exists()
    student, _ = load_model(str(tmp_path / "run.keras"))
    overrides = dict(image_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    loaded = create_model(
        "deit_tiny_distilled_patch16_224",
        pretrained=str(tmp_path / "run.keras"),
        num_classes=10,
        **overrides,
    )
    images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(loaded(images), student(images), rtol=1e-5, atol=1e-5)


def test_feature_distillation_needs_a_teacher_and_well_formed_blocks():
    config = TrainConfig(feature_distillation=True, distillation_type="none")
    with pytest.raises(UserInputError, match="feature_distillation needs a teacher"):
        config.validate()
    config = TrainConfig(feature_distillation=True, feature_student_blocks="0,x")
    with pytest.raises(UserInputError, match="feature_student_blocks must be comma-separated"):
        config.validate()
    config = TrainConfig(feature_student_blocks="0, 6,11", feature_teacher_layers="a, b,c")
    assert config.feature_blocks == (0, 6, 11) and config.feature_layers == ("a", "b", "c")
    assert config.feature_weight == 0.0  # off unless --feature_distillation
