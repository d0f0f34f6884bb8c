"""The fine-tune-then-distil flagfiles on a tiny config: teacher fine-tuned, then the student."""

import json

import keras
import numpy as np
import pytest

from deit_keras.deploy import saving
from deit_keras.distill.teachers import TeacherAdapter
from deit_keras.testing import run_cli, tiny_model

TINY = ["--image_size=32", "--patch_size=8", "--embed_dim=32", "--depth=2", "--num_heads=2"]


def no_top_weights(path):
    """A random "pretrained" MobileNetV3Small backbone (no top) saved as a weights file."""
    backbone = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    backbone.save_weights(path)
    return backbone


def run_finetune_flagfiles(tmp_path, *flags):
    """`deit-train` with the fine-tune flagfile pair on tiny digits; the teacher is saved
    to `tmp_path/teacher.keras` (trained for one epoch), the student to `student.keras`."""
    return run_cli(
        "train",
        "--flagfile=experiments/deit_finetune.cfg",
        *TINY,
        "--dataset=digits",
        f"--data_dir={tmp_path / 'tfds'}",
        f"--teacher={tmp_path / 'teacher.keras'}",
        "--teacher_epochs=1",
        "--train_fraction=0.1",  # both trainings see 143 images: a few steps each
        "--batch_size=16",
        "--epochs=1",
        "--warmup_epochs=0",
        f"--model_dir={tmp_path / 'run'}",
        f"--output={tmp_path / 'student.keras'}",
        "--export_savedmodel=false",
        "--progress=none",
        # XLA's compile of both train steps was a third of this test's ~110 s (one core);
        # training under XLA is tests/cli/test_train.py::test_reduced_digits_run_learns_and_saves.
        "--nojit_compile",
        *flags,
        timeout=600,
    )


def test_flagfile_pair_fine_tunes_teacher_then_distils_pretrained_student(tmp_path):
    student_start = str(tmp_path / "pretrained_student.keras")
    saving.save_model(tiny_model(), student_start)
    backbone = no_top_weights(str(tmp_path / "backbone.weights.h5"))
    teacher_path = tmp_path / "teacher.keras"
    process = run_finetune_flagfiles(
        tmp_path,
        f"--pretrained_weights={student_start}",
        "--teacher_base=mobilenetv3small",
        f"--teacher_weights={tmp_path / 'backbone.weights.h5'}",
        "--grad_accum_steps=2",
        "--steps_per_epoch=4",
    )
    assert process.returncode == 0, process.stderr[-3000:]
    teacher = keras.models.load_model(teacher_path)
    assert isinstance(teacher, TeacherAdapter) and teacher.application == "mobilenet_v3"
    inner = teacher.teacher.get_layer(backbone.name)
    # Fine-tuned from the weights file (AdamW at 1e-4 for a few steps moves each weight
    # by ~1e-4 each), not rebuilt at random (which would differ by ~0.1).
    changes = [
        float(np.abs(a - b).max())
        for a, b in zip(backbone.get_weights(), inner.get_weights(), strict=True)
    ]
    assert 0 < max(changes) < 0.01, max(changes)
    student, _ = saving.load_model(str(tmp_path / "student.keras"))
    assert student.distilled and student.image_size == 32
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["epochs"] == 1 and "teacher_top1" in results


@pytest.mark.large  # ~150 s on 2 cores (tracing RegNetY's train step); fast twins:
# tests/distill/test_regnet.py::test_finetune_teacher_starts_from_timms_weights_with_a_new_head
# and tests/training/test_regnet_teacher.py::test_regnet_teacher_from_a_timm_checkpoint_file
def test_the_papers_teacher_fine_tuned_from_a_timm_checkpoint(tmp_path):
    """`--teacher_base=regnety_*` (`regnety160` is the paper's): timm weights, a new head."""
    timm = pytest.importorskip("timm")
    reference = timm.create_model("regnety_002", pretrained=False)
    state = {key: value.numpy() for key, value in reference.state_dict().items()}
    np.savez(tmp_path / "regnety_002.npz", **state)
    teacher_path = tmp_path / "teacher.keras"
    process = run_finetune_flagfiles(
        tmp_path,
        "--nopretrained",  # the student from scratch: the teacher is what is checked
        "--teacher_base=regnety_002",
        f"--teacher_weights={tmp_path / 'regnety_002.npz'}",
        "--steps_per_epoch=2",
    )
    assert process.returncode == 0, process.stderr[-3000:]
    teacher = keras.models.load_model(teacher_path)
    assert isinstance(teacher, TeacherAdapter) and teacher.num_classes == 10
    stem = teacher.teacher.get_layer("regnety_002").get_layer("stem_conv")
    start = state["stem.conv.weight"].transpose(2, 3, 1, 0)  # timm OIHW -> Keras HWIO
    change = float(np.abs(stem.get_weights()[0] - start).max())
    assert 0 < change < 0.01, change  # fine-tuned from the checkpoint, not rebuilt at random
