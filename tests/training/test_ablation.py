"""The ablation's arithmetic, table and plot on made-up runs; tests/cli/test_ablate.py trains."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from deit_keras.training import ablation
from deit_keras.training.ablation import check_arguments, curves_png, markdown_table, summarize
from deit_keras.training.config import TrainConfig


def _run(seed, kind, top1, cls_top1, dist_top1, wall_s, curve):
    return dict(
        seed=seed,
        type=kind,
        top1=top1,
        cls_top1=cls_top1,
        dist_top1=dist_top1,
        wall_s=wall_s,
        val_top1=curve,
    )


RUNS = [
    _run(0, "none", 90.0, 88.0, 89.0, 10.0, [50.0, 80.0, 90.0]),
    _run(0, "hard", 94.0, 92.0, 95.0, 12.0, [60.0, 85.0, 94.0]),
    _run(1, "none", 92.0, 90.0, 91.0, 14.0, [60.0, 84.0, 92.0]),
    _run(1, "hard", 93.0, 91.0, 93.0, 16.0, [70.0, 89.0, 93.0]),
]
TEACHERS = [{"seed": 0, "top1": 98.0, "wall_s": 5.0}, {"seed": 1, "top1": 97.0, "wall_s": 7.0}]


def _as_fractions(rows):
    """The made-up percentages in the unit runs report: fractions (issue #12 item 8)."""
    scaled = []
    for row in rows:
        row = dict(row)
        for key in ("top1", "cls_top1", "dist_top1"):
            if key in row:
                row[key] /= 100.0
        if "val_top1" in row:
            row["val_top1"] = [value / 100.0 for value in row["val_top1"]]
        scaled.append(row)
    return scaled


def test_summary_is_mean_and_sample_std():
    summary = summarize(RUNS, TEACHERS, ["none", "hard"])
    assert list(summary) == ["teacher", "none", "hard"]
    assert summary["none"]["top1"] == {
        "mean": 91.0,
        "std": pytest.approx(np.sqrt(2.0)),  # sample std of 90, 92
        "n": 2,
        "values": [90.0, 92.0],
    }
    assert summary["hard"]["dist_top1"]["mean"] == 94.0
    assert summary["hard"]["wall_s"]["mean"] == 14.0
    assert summary["none"]["val_top1"] == [55.0, 82.0, 91.0]
    assert summary["teacher"]["top1"]["mean"] == 97.5


def test_single_seed_has_zero_std_and_missing_heads_are_left_out():
    runs = [{"type": "none", "top1": 50.0, "wall_s": 3.0, "val_top1": [40.0, 50.0]}]
    summary = summarize(runs, [], ["none"])
    assert summary["none"]["top1"] == {"mean": 50.0, "std": 0.0, "n": 1, "values": [50.0]}
    assert "dist_top1" not in summary["none"] and "teacher" not in summary


def test_markdown_table():
    report = {
        "command": "deit-ablate --seeds=2",
        "date": "2026-11-25 08:00 UTC",
        "seeds": [0, 1],
        "types": ["none", "hard"],
        "teacher_trained": True,
        "config": {"dataset": "digits", "model": "m", "epochs": 3, "teacher_base": None},
        "summary": summarize(_as_fractions(RUNS), _as_fractions(TEACHERS), ["none", "hard"]),
    }
    lines = markdown_table(report).splitlines()
    assert lines[2] == "`deit-ablate --seeds=2`" and lines[4].startswith("2026-11-25 08:00 UTC")
    assert "| teacher (small CNN) | 0.9750 ± 0.0071 | – | – | 6 |" in lines
    none = "| student, no distillation | 0.9100 ± 0.0141 | 0.8900 ± 0.0141 | 0.9000 ± 0.0141 | 12 |"
    hard = (
        "| student, hard distillation | 0.9350 ± 0.0071 | 0.9150 ± 0.0071 | 0.9400 ± 0.0141 | 14 |"
    )
    assert none in lines and hard in lines
    assert "a fraction" in lines[4]


def test_check_arguments():
    assert check_arguments(1, ["hard", "soft"]) == ("hard", "soft")
    with pytest.raises(ValueError, match="seeds must be positive, got 0"):
        check_arguments(0, ["hard"])
    with pytest.raises(ValueError, match="medium"):
        check_arguments(2, ["none", "medium"])
    with pytest.raises(ValueError, match="twice"):
        check_arguments(2, ["hard", "hard"])
    with pytest.raises(ValueError, match="non-empty"):
        check_arguments(2, [])


def test_curves_png(tmp_path):
    path = str(tmp_path / "curves.png")
    curves_png({"none": [0.50, 0.80], "soft": [0.55, 0.85], "hard": [0.60, 0.90]}, path)
    with Image.open(path) as picture:
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    for colour in ((90, 90, 90), (40, 120, 220), (205, 45, 5)):
        assert (np.abs(pixels - colour).sum(axis=-1) < 10).sum() > 50, colour
    curves_png({"none": [0.42]}, path)  # one epoch: a point, no line
    assert [name for name in tmp_path.iterdir()] == [tmp_path / "curves.png"]


def test_none_runs_keep_the_given_teacher_so_split_calls_share_runs(tmp_path, monkeypatch):
    """`--types=none` and `--types=hard` side by side, then all types: the runs are reused."""
    from deit_keras.testing import digits_config
    from deit_keras.training import ablation
    from deit_keras.training.callbacks import record_epochs

    trained = []

    def fake_run(config):
        trained.append((config.distillation_type, config.teacher))
        results = {"top1": 0.5, "cls_top1": 0.5, "dist_top1": 0.5, "wall_s": 1.0}
        if config.distillation_type != "none":
            results["teacher_top1"] = 0.9
        with open(os.path.join(config.model_dir, "results.json"), "w") as handle:
            json.dump(results, handle)
        record_epochs(config.model_dir, [0], {"val_top1": [0.5]})  # as a real run writes
        return results

    monkeypatch.setattr(ablation.runner, "run_training", fake_run)
    monkeypatch.setattr(ablation, "seed_teacher", lambda config, seed_dir: ("t.keras", 2.0))
    config = digits_config(tmp_path, model_dir=str(tmp_path / "out"))
    ablation.run_ablation(config, 1, ["none"])
    ablation.run_ablation(config, 1, ["hard"])
    assert trained == [("none", config.teacher), ("hard", "t.keras")]
    report = ablation.run_ablation(config, 1, ["none", "hard"])  # refused before the fix
    assert len(trained) == 2 and all(run["reused"] for run in report["runs"])


def test_a_record_matches_whatever_its_run_only_settings_say():
    """Records written before `steps_per_execution` became run-only still match."""
    config = TrainConfig(dataset="digits", lr=1e-3)
    stored = dict(ablation._config_key(config), steps_per_execution=1, model_dir="elsewhere")
    ablation._check_same_config("teacher.json", stored, config)
    with pytest.raises(ValueError, match=r"made with other settings \(lr differ\)"):
        ablation._check_same_config("teacher.json", dict(stored, lr=2e-3), config)
