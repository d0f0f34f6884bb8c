"""The train CLI's closing comparison (issue #12 item 3) and its units."""

import dataclasses
import shlex

from deit_keras.cli import train
from deit_keras.testing import digits_config


def test_comparison_names_teacher_heads_wall_and_ablation(tmp_path):
    config = digits_config(tmp_path)
    results = {
        "top1": 0.98333,
        "cls_top1": 0.975,
        "dist_top1": 0.98056,
        "teacher_top1": 0.98889,
        "model": "deit_tiny_distilled_patch16_224",
        "wall_s": 412.3,
        "saved_model": "/x/deit_digits.keras",
    }
    text = train.comparison(results, config, "python -m deit_keras.ablate --seeds=3")
    lines = text.splitlines()
    assert "fractions" in lines[0]
    assert lines[1].endswith(": 0.9889") and "teacher" in lines[1]
    assert "cls+dist 0.9833, cls head 0.9750, dist head 0.9806" in lines[2]
    assert f"distillation {config.distillation_type}" in lines[2]
    assert lines[3].startswith("412 s in all")
    assert lines[4].endswith("python -m deit_keras.ablate --seeds=3")
    # A flagfile's --teacher_base (what a missing teacher is trained from) is not the file's.
    based = dataclasses.replace(config, teacher="runs/t/cnn.keras", teacher_base="resnet50")
    assert (
        train.comparison(results, based, "cmd").splitlines()[1].startswith("  teacher (cnn.keras)")
    )
    featured = dataclasses.replace(config, feature_distillation=True)
    line = train.comparison(results, featured, "cmd").splitlines()[2]
    assert f"distillation {config.distillation_type} + features)" in line


def test_a_workers_comparison_says_the_chief_saves_and_offers_no_ablation(tmp_path):
    """A multi-worker run's other workers save nothing (their results say chief: false);
    each printed `saved PATH` and the ablation command as the chief does."""
    config = digits_config(tmp_path)
    results = {"top1": 0.5, "cls_top1": 0.5, "dist_top1": 0.5, "model": "m", "wall_s": 3}
    results |= {"saved_model": "/runs/m.keras", "chief": False}
    lines = train.comparison(results, config, "deit_keras.ablate").splitlines()
    assert lines[-1].endswith("; the chief worker saves /runs/m.keras"), lines
    assert "deit_keras.ablate" not in "\n".join(lines)
    chief = train.comparison(results | {"chief": True}, config, "deit_keras.ablate")
    assert "; saved /runs/m.keras" in chief and "deit_keras.ablate" in chief


def test_comparison_without_teacher_or_dist_head(tmp_path):
    config = digits_config(tmp_path, distillation_type="none")
    results = {"top1": 0.5, "cls_top1": 0.5, "model": "m", "wall_s": 3, "saved_model": "m.keras"}
    text = train.comparison(results, config, "cmd")
    assert "teacher" not in text.splitlines()[1] and "dist head" not in text
    assert "cls+dist" not in text and "): cls head 0.5000" in text.splitlines()[1]
    # The ablation's distilled rows would take the default teacher (the paper's ImageNet
    # RegNetY): after deit3_s.cfg on digits, the command printed failed.
    assert "deit_keras.ablate" not in train.comparison(results, config, "deit_keras.ablate")


def test_ablate_command_keeps_run_flags_and_drops_per_run_ones():
    argv = [
        "--flagfile=experiments/digits.cfg",
        "--model_dir=/tmp/a",
        "--output=/tmp/a.keras",
        "--distillation_type=hard",
        "--distillation_tau=2.0",
        "--epochs=5",
        "--output",  # the space form and absl's one dash: the ablation refused the command
        "/tmp/b.keras",
        "-model_dir=/tmp/b",
    ]
    words = shlex.split(train.ablate_command(argv))
    assert words[:3] == ["python", "-m", "deit_keras.ablate"]
    assert words[3:] == [
        "--flagfile=experiments/digits.cfg",
        "--distillation_tau=2.0",
        "--epochs=5",
        "--seeds=3",
        "--output_dir=runs/ablation",
    ]
