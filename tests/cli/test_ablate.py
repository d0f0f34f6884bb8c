"""`python -m deit_keras.ablate` end to end: two seeds of none vs hard on digits, in ~30 s."""

import json
import os
import statistics

import keras
import numpy as np
import pytest
from PIL import Image

from deit_keras.testing import assert_one_line_error, run_cli

TINY = (
    "--flagfile=experiments/digits.cfg",
    "--embed_dim=32",
    "--depth=1",
    "--num_heads=2",
    "--epochs=2",
    "--steps_per_epoch=2",
    "--teacher_epochs=1",
    "--summary_every=0",
    "--nojit_compile",
    "--progress=none",
    "--seeds=2",
    "--types=none,hard",
)


def _read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """(output_dir, extra flags, ablation.json) of 2 seeds x (none, hard), 1-epoch teachers."""
    tmp_path = tmp_path_factory.mktemp("ablate")
    where = (f"--data_dir={tmp_path / 'tfds'}", f"--output_dir={tmp_path / 'out'}")
    process = run_cli("ablate", *TINY, *where)
    assert process.returncode == 0, process.stderr
    assert "| student, hard distillation |" in process.stdout
    return str(tmp_path / "out"), where, _read_json(tmp_path / "out" / "ablation.json")


def test_each_number_is_a_real_runs(ablation):
    output_dir, _, report = ablation
    assert report["seeds"] == [0, 1] and report["types"] == ["none", "hard"]
    assert [(run["seed"], run["type"]) for run in report["runs"]] == [
        (0, "none"),
        (0, "hard"),
        (1, "none"),
        (1, "hard"),
    ]
    for run in report["runs"]:
        model_dir = os.path.join(output_dir, f"seed_{run['seed']}", run["type"])
        assert run["model_dir"] == model_dir and not run["reused"]
        results = _read_json(os.path.join(model_dir, "results.json"))
        assert results["distillation"] == run["type"]
        for key in ("top1", "cls_top1", "dist_top1", "wall_s"):
            assert run[key] == results[key], key
        assert results["saved_model"] == os.path.join(model_dir, "student.keras")
        assert not os.path.exists(os.path.join(model_dir, "student_savedmodel"))
        # One unit everywhere: fractions, as the Keras logs (issue #12 item 8).
        assert len(run["val_top1"]) == 2 and all(0 <= value <= 1 for value in run["val_top1"])
        assert all(0 <= run[key] <= 1 for key in ("top1", "cls_top1", "dist_top1"))
        if run["type"] == "hard":
            teacher = report["teachers"][run["seed"]]
            seed_dir = os.path.join(output_dir, f"seed_{run['seed']}")
            assert teacher["path"] == os.path.join(seed_dir, "teacher.keras")
            assert teacher["top1"] == results["teacher_top1"] and teacher["wall_s"] > 0
        else:
            assert "teacher_top1" not in results
    # Each seed trains its own teacher and students from its own initialisation.
    teachers = [keras.models.load_model(t["path"]).get_weights() for t in report["teachers"]]
    assert any(not np.array_equal(a, b) for a, b in zip(*teachers, strict=True))
    students = [
        keras.models.load_model(os.path.join(output_dir, f"seed_{s}", "none", "student.keras"))
        for s in (0, 1)
    ]
    pairs = zip(students[0].get_weights(), students[1].get_weights(), strict=True)
    assert any(not np.array_equal(a, b) for a, b in pairs)


def test_summary_is_mean_and_sample_std_of_the_runs(ablation):
    _, _, report = ablation
    summary = report["summary"]
    assert list(summary) == ["teacher", "none", "hard"]
    for name in ("none", "hard"):
        runs = [run for run in report["runs"] if run["type"] == name]
        for key in ("top1", "cls_top1", "dist_top1", "wall_s"):
            values = [run[key] for run in runs]
            stats = summary[name][key]
            assert stats["values"] == values and stats["n"] == 2
            assert stats["mean"] == pytest.approx(statistics.fmean(values))
            assert stats["std"] == pytest.approx(abs(values[0] - values[1]) / np.sqrt(2))
        curves = np.array([run["val_top1"] for run in runs])
        np.testing.assert_allclose(summary[name]["val_top1"], curves.mean(axis=0))
    teacher_top1 = [teacher["top1"] for teacher in report["teachers"]]
    assert summary["teacher"]["top1"]["values"] == teacher_top1
    assert summary["teacher"]["top1"]["std"] == pytest.approx(statistics.stdev(teacher_top1))


def test_table_and_curves_are_written(ablation):
    output_dir, _, report = ablation
    table = open(os.path.join(output_dir, "ablation.md"), encoding="utf-8").read()
    assert "`python -m deit_keras.ablate --flagfile=experiments/digits.cfg" in table
    assert report["date"] in table and "seeds 0, 1" in table
    lines = table.splitlines()
    hard = report["summary"]["hard"]
    row = next(line for line in lines if line.startswith("| student, hard distillation |"))
    for key in ("top1", "cls_top1", "dist_top1"):
        assert f"{hard[key]['mean']:.4f} ± {hard[key]['std']:.4f}" in row
    assert any(line.startswith("| teacher (small CNN) |") for line in lines)
    assert "soft distillation" not in table
    with Image.open(os.path.join(output_dir, "learning_curves.png")) as picture:
        assert picture.format == "PNG" and picture.size == (560, 360)
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    assert (np.abs(pixels - (205, 45, 5)).sum(axis=-1) < 10).any()  # the hard curve


def test_rerun_reuses_finished_runs_and_refuses_other_settings(ablation):
    output_dir, where, report = ablation
    teacher = report["teachers"][0]["path"]
    stamp = os.path.getmtime(teacher)
    process = run_cli("ablate", *TINY, *where)
    assert process.returncode == 0, process.stderr
    again = _read_json(os.path.join(output_dir, "ablation.json"))
    assert all(run["reused"] for run in again["runs"])
    assert again["summary"] == report["summary"] and os.path.getmtime(teacher) == stamp
    process = run_cli("ablate", *TINY, *where, "--lr=1e-3")
    assert_one_line_error(process, "lr differ", "--output_dir")


def test_bad_arguments_are_one_line_errors(tmp_path):
    # --seeds=0 takes the same path (training.ablation.check_arguments, tested there).
    process = run_cli(
        "ablate",
        "--flagfile=experiments/digits.cfg",
        "--types=none,medium",
        f"--output_dir={tmp_path / 'out'}",
    )
    assert_one_line_error(process, "medium", "none, soft, hard")
    assert not (tmp_path / "out").exists()
