"""The paper's default teacher, --teacher=regnety160: a RegNetY of ours with timm's weights."""

import io

import pytest

from deit_keras.deploy import pretrained
from deit_keras.testing import (
    digits_config,
    prepare_digits,
    run_cli,
    timm_reference,
    user_stderr,
)
from deit_keras.testing_server import closed_port_url
from deit_keras.training.config import TrainConfig
from deit_keras.training.runner import run_training

TINY = dict(epochs=1, steps_per_epoch=2, jit_compile=False, teacher_epochs=0)


# ~70 s on 2 cores; fast twins: test_regnet_teacher_from_a_timm_checkpoint_file (the same
# path, regnety_002) and tests/distill/test_regnet.py::test_regnety_160_has_timms_parameters
@pytest.mark.large
def test_default_teacher_trains_a_student_with_random_weights(tmp_path):
    assert TrainConfig().teacher == "regnety160"
    config = digits_config(tmp_path, teacher="regnety160", teacher_weights="none", **TINY)
    results = run_training(config)
    assert 0 <= results["teacher_top1"] <= 1 and 0 <= results["top1"] <= 1


def test_regnet_teacher_from_a_timm_checkpoint_file(tmp_path):
    """A timm .pth (DeiT's release layout: a `model` wrapper) of a 10-class RegNetY."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    buffer = io.BytesIO()
    torch.save({"model": timm_reference("regnety_002", num_classes=10).state_dict()}, buffer)
    (tmp_path / "regnety_002.pth").write_bytes(buffer.getvalue())
    config = digits_config(
        tmp_path, teacher="regnety_002", teacher_weights=str(tmp_path / "regnety_002.pth"), **TINY
    )
    assert 0 <= run_training(config)["teacher_top1"] <= 1


def test_default_teacher_on_other_classes_is_refused_before_its_download(tmp_path):
    """DeiT's released teacher predicts ImageNet's 1000 classes; digits has 10."""
    prepare_digits(tmp_path)
    process = run_cli(
        "train",
        "--flagfile=experiments/digits.cfg",
        f"--data_dir={tmp_path / 'tfds'}",
        f"--model_dir={tmp_path / 'run'}",
        f"--output={tmp_path / 'student.keras'}",
        "--teacher=regnety160",
        "--teacher_epochs=0",
        env={pretrained.MIRROR_ENV: closed_port_url(), pretrained.CACHE_ENV: str(tmp_path)},
    )
    assert process.returncode == 2 and "Traceback" not in process.stderr, process.stderr
    assert user_stderr(process) == [user_stderr(process)[-1]], process.stderr  # no download
    error = user_stderr(process)[-1]
    assert error.startswith("error: The released regnety160 teacher predicts the 1000"), error
    assert "the dataset has 10" in error and "--teacher_weights=PATH" in error, error
    assert not list(tmp_path.rglob("*.pth"))
