"""The ablation's arithmetic, table and plot on made-up runs; tests/cli/test_ablate.py trains."""

import json
import os

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from deit_keras.training import ablation, ablation_plots, ablation_rows
from deit_keras.training.ablation import markdown_table, summarize
from deit_keras.training.ablation_rows import check_arguments
from deit_keras.training.config import TrainConfig


def _run(seed, row, top1, cls_top1, dist_top1, wall_s, curve):
    run = dict(seed=seed, row=row, top1=top1, cls_top1=cls_top1, wall_s=wall_s, val_top1=curve)
    if dist_top1 is not None:  # a DeiT without dist token has one head
        run["dist_top1"] = dist_top1
    return run


RUNS = [
    _run(0, "none", 90.0, 90.0, None, 10.0, [50.0, 80.0, 90.0]),
    _run(0, "dist_hard", 94.0, 92.0, 95.0, 12.0, [60.0, 85.0, 94.0]),
    _run(1, "none", 92.0, 92.0, None, 14.0, [60.0, 84.0, 92.0]),
    _run(1, "dist_hard", 93.0, 91.0, 93.0, 16.0, [70.0, 89.0, 93.0]),
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
    summary = summarize(RUNS, TEACHERS, ["none", "dist_hard"])
    assert list(summary) == ["teacher", "none", "dist_hard"]
    assert summary["none"]["top1"] == {
        "mean": 91.0,
        "std": pytest.approx(np.sqrt(2.0)),  # sample std of 90, 92
        "n": 2,
        "values": [90.0, 92.0],
    }
    assert "dist_top1" not in summary["none"]  # no dist token, no dist head
    assert summary["dist_hard"]["dist_top1"]["mean"] == 94.0
    assert summary["dist_hard"]["wall_s"]["mean"] == 14.0
    assert summary["none"]["val_top1"] == [55.0, 82.0, 91.0]
    np.testing.assert_allclose(
        summary["none"]["val_top1_std"], np.std([[50, 80, 90], [60, 84, 92]], axis=0, ddof=1)
    )
    assert summary["teacher"]["top1"]["mean"] == 97.5


def test_single_seed_has_no_std_and_missing_heads_are_left_out():
    runs = [{"row": "none", "top1": 50.0, "wall_s": 3.0, "val_top1": [40.0, 50.0]}]
    summary = summarize(runs, [], ["none"])
    assert summary["none"]["top1"] == {"mean": 50.0, "std": None, "n": 1, "values": [50.0]}
    assert summary["none"]["val_top1_std"] == [None, None]
    assert summary["none"]["val_epochs"] == [1, 2]  # runs without val_epochs: every epoch
    assert "dist_top1" not in summary["none"] and "teacher" not in summary


def test_a_teacher_given_by_path_is_one_value_not_one_per_seed():
    """Every seed evaluates the one teacher: its row is that value, not "± 0.0000" over n."""
    given = [{"seed": seed, "path": "cnn.keras", "top1": 0.97, "wall_s": None} for seed in (0, 1)]
    summary = summarize(RUNS, given, ["none"])
    assert summary["teacher"]["top1"] == {"mean": 0.97, "std": None, "n": 1, "values": [0.97]}
    assert ablation.stats_cell(summary["teacher"]["top1"]) == "0.9700"
    trained = [dict(teacher, path=f"seed_{teacher['seed']}/teacher.keras") for teacher in TEACHERS]
    assert summarize(RUNS, trained, ["none"])["teacher"]["top1"]["n"] == 2


def test_curves_of_runs_validated_every_n_epochs_keep_their_epochs():
    runs = [
        {"row": "none", "top1": 0.5, "wall_s": 3.0, "val_top1": [0.4, 0.5], "val_epochs": [5, 10]},
        {"row": "none", "top1": 0.6, "wall_s": 3.0, "val_top1": [0.5], "val_epochs": [5]},
    ]
    summary = summarize(runs, [], ["none"])
    assert summary["none"]["val_top1"] == [0.45] and summary["none"]["val_epochs"] == [5]


def test_curves_of_seeds_validated_at_other_frequencies_average_only_shared_epochs():
    """A rerun adding a seed may validate every 2 epochs where the first did every one."""
    runs = [
        {"row": "none", "top1": 0.5, "wall_s": 3.0, "val_top1": [0.1, 0.2, 0.3, 0.4]},
        {"row": "none", "top1": 0.6, "wall_s": 3.0, "val_top1": [0.6, 0.8], "val_epochs": [2, 4]},
    ]
    summary = summarize(runs, [], ["none"])
    assert summary["none"]["val_epochs"] == [2, 4]
    np.testing.assert_allclose(summary["none"]["val_top1"], [0.4, 0.6])


def test_markdown_table_has_the_papers_rows():
    report = {
        "command": "deit-ablate --seeds=2",
        "date": "2026-11-25 08:00 UTC",
        "seeds": [0, 1],
        "rows": ["none", "dist_hard"],
        "teacher_trained": True,
        "config": {
            "dataset": "digits",
            "model": "deit_tiny_distilled_patch16_224",
            "epochs": 3,
            "teacher_base": None,
        },
        "summary": summarize(_as_fractions(RUNS), _as_fractions(TEACHERS), ["none", "dist_hard"]),
    }
    lines = markdown_table(report).splitlines()
    assert lines[2] == "`deit-ablate --seeds=2`" and lines[4].startswith("2026-11-25 08:00 UTC")
    assert "deit_tiny_patch16_224 (DeiT)" in lines[4] and "a fraction" in lines[4]
    assert "| teacher (small CNN) | – | 0.9750 ± 0.0071 | 6 |" in lines
    assert "| DeiT, no distillation | – | 0.9100 ± 0.0141 | 12 |" in lines
    dist = "DeiT⚗, hard distillation (dist token)"
    assert f"| {dist}: class embedding | hard | 0.9150 ± 0.0071 | 14 |" in lines
    assert f"| {dist}: distil. embedding | hard | 0.9400 ± 0.0141 | 14 |" in lines
    assert f"| {dist}: class+distil. | hard | 0.9350 ± 0.0071 | 14 |" in lines
    assert lines.index("| teacher (small CNN) | – | 0.9750 ± 0.0071 | 6 |") < lines.index(
        "| DeiT, no distillation | – | 0.9100 ± 0.0141 | 12 |"
    )


def test_check_arguments():
    assert check_arguments(1, ["hard", "soft"]) == ("hard", "soft")
    assert check_arguments(1, ablation_rows.DEFAULT_ROWS) == ("none", "soft", "hard", "dist_hard")
    with pytest.raises(ValueError, match="seeds must be positive, got 0"):
        check_arguments(0, ["hard"])
    with pytest.raises(ValueError, match="medium"):
        check_arguments(2, ["none", "medium"])
    with pytest.raises(ValueError, match="twice"):
        check_arguments(2, ["hard", "hard"])
    with pytest.raises(ValueError, match="non-empty"):
        check_arguments(2, [])


def _pixels(path):
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        return picture.size, np.asarray(picture.convert("RGB")).astype(int)


def _near(pixels, rgb, tolerance=6):
    return (np.abs(pixels - np.asarray(rgb)).max(axis=-1) <= tolerance).sum()


def test_learning_curves_are_lines_in_std_bands(tmp_path):
    path = str(tmp_path / "curves.png")
    curves = {
        "DeiT, no distillation": ([0.50, 0.70, 0.80], [0.05, 0.04, 0.03]),
        "DeiT⚗, hard distillation": ([0.55, 0.80, 0.90], [0.02, 0.06, 0.02]),
    }
    references = {"teacher, final": {"mean": 0.95, "std": 0.01}}
    ablation_plots.learning_curves_png(curves, path, "t", references, size=(640, 400))
    size, pixels = _pixels(path)
    assert size == (640, 400)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # not one colour
    background = pixels[0, 0]
    for index in range(2):
        line = np.asarray(to_rgb(ablation_plots.colour(index))) * 255
        # A band is its line's colour at BAND_ALPHA over the white axes.
        band = ablation_plots.BAND_ALPHA * line + (1 - ablation_plots.BAND_ALPHA) * 255
        assert np.abs(band - background).max() > 20  # the band is not the background
        assert _near(pixels, band) > 200, index
        assert _near(pixels, line, 10) > 100, index
    # Without spread (one seed: no std) there is no band: the band's pixels are gone.
    flat = {label: (means, [None] * 3) for label, (means, _) in curves.items()}
    ablation_plots.learning_curves_png(flat, path, "t", references, size=(640, 400))
    _, pixels = _pixels(path)
    line = np.asarray(to_rgb(ablation_plots.colour(0))) * 255
    assert (
        _near(pixels, ablation_plots.BAND_ALPHA * line + (1 - ablation_plots.BAND_ALPHA) * 255) < 50
    )
    ablation_plots.learning_curves_png({"one epoch": ([0.42], [0.0])}, path, "t")  # a point
    assert _pixels(path)[0] == (800, 500)
    every_five = {"validated every 5": ([0.4, 0.5], [0.0, 0.0], [5, 10])}
    ablation_plots.learning_curves_png(every_five, path, "t", size=(640, 400))
    assert _near(_pixels(path)[1], np.asarray(to_rgb(ablation_plots.colour(0))) * 255, 10) > 100
    assert [name for name in tmp_path.iterdir()] == [tmp_path / "curves.png"]  # atomic


def _fake_runs(monkeypatch, trained, features=None):
    """run_training replaced by one that writes what a real run writes, instantly."""
    features = [] if features is None else features

    def fake_run(config):
        trained.append((config.distillation_type, config.teacher, config.model))
        features.append(config.feature_distillation)
        results = {"top1": 0.5, "cls_top1": 0.5, "wall_s": 1.0}
        if "distilled" in config.model:
            results["dist_top1"] = 0.5
        if config.distillation_type != "none":
            results["teacher_top1"] = 0.9
        with open(os.path.join(config.model_dir, "results.json"), "w") as handle:
            json.dump(results, handle)
        record_epochs(config.model_dir, [0, 1], {"val_top1": [0.4, 0.5]})  # as a real run writes
        return results

    from deit_keras.training.callbacks import record_epochs

    monkeypatch.setattr(ablation.runner, "run_training", fake_run)
    monkeypatch.setattr(
        ablation,
        "seed_teacher",
        lambda config, seed_dir: (ablation.seed_teacher_path(config, seed_dir), 2.0),
    )


def test_rows_train_the_papers_students(tmp_path, monkeypatch):
    """Class-token rows train DeiT without dist token, dist rows DeiT⚗; names as Table 3."""
    from deit_keras.testing import digits_config

    trained, features = [], []
    _fake_runs(monkeypatch, trained, features)
    config = digits_config(tmp_path, model_dir=str(tmp_path / "out"))
    rows = [row.name for row in ablation_rows.ROWS]
    report = ablation.run_ablation(config, 2, rows)
    plain, distilled = "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"
    own = str(tmp_path / "out" / "seed_0" / "teacher.keras")  # the seed's own teacher
    assert trained[:6] == [
        ("none", config.teacher, plain),
        ("soft", own, plain),
        ("hard", own, plain),
        ("hard", own, distilled),
        ("none", config.teacher, distilled),
        ("hard", own, distilled),
    ]
    assert features[:6] == [False] * 5 + [True]  # the feature row: hard + feature distillation
    assert [(run["seed"], run["row"]) for run in report["runs"][:6]] == [(0, name) for name in rows]
    with_token = {row.name for row in ablation_rows.ROWS if row.dist_token}
    for run in report["runs"]:
        assert run["model_dir"] == str(tmp_path / "out" / f"seed_{run['seed']}" / run["row"])
        assert run["model"] == (distilled if run["row"] in with_token else plain)
    assert list(report["summary"]) == ["teacher", *rows]
    table = open(report["markdown"], encoding="utf-8").read()
    for row in ablation_rows.ROWS:
        assert f"| {row.label}" in table
    assert _pixels(report["curves"])[0] == (800, 500)


def test_none_runs_keep_the_given_teacher_so_split_calls_share_runs(tmp_path, monkeypatch):
    """`--rows=none` and `--rows=hard` side by side, then both: the runs are reused."""
    from deit_keras.testing import digits_config

    trained = []
    _fake_runs(monkeypatch, trained)
    config = digits_config(tmp_path, model_dir=str(tmp_path / "out"))
    ablation.run_ablation(config, 1, ["none"])
    ablation.run_ablation(config, 1, ["hard"])
    plain = "deit_tiny_patch16_224"
    own = str(tmp_path / "out" / "seed_0" / "teacher.keras")
    assert trained == [("none", config.teacher, plain), ("hard", own, plain)]
    report = ablation.run_ablation(config, 1, ["none", "hard"])  # refused before the fix
    assert len(trained) == 2 and all(run["reused"] for run in report["runs"])


def test_a_record_matches_whatever_its_run_only_settings_say():
    """Records written before `steps_per_execution` became run-only still match."""
    config = TrainConfig(dataset="digits", lr=1e-3)
    stored = dict(ablation._config_key(config), steps_per_execution=1, model_dir="elsewhere")
    ablation._check_same_config("teacher.json", stored, config)
    with pytest.raises(ValueError, match=r"made with other settings \(lr differ\)"):
        ablation._check_same_config("teacher.json", dict(stored, lr=2e-3), config)


def test_a_flagfile_with_feature_distillation_leaves_the_objective_to_the_rows(
    tmp_path, monkeypatch
):
    """small_data.cfg turns feature distillation on for single runs; the rows stay the rows."""
    from deit_keras.testing import digits_config

    trained, features = [], []
    _fake_runs(monkeypatch, trained, features)
    config = digits_config(tmp_path, model_dir=str(tmp_path / "out"), feature_distillation=True)
    ablation.run_ablation(config, 1, ["none", "dist_hard", "feature"])
    assert features == [False, False, True]
    plain = digits_config(tmp_path, model_dir=str(tmp_path / "out"))
    report = ablation.run_ablation(plain, 1, ["none", "dist_hard", "feature"])  # the same runs
    assert len(features) == 3 and all(run["reused"] for run in report["runs"])


def test_a_subset_smaller_than_a_batch_is_refused_before_a_teacher_trains(tmp_path):
    """Found at the student's turn before, after the teacher had trained and its records
    were written (a rerun with a smaller batch was then refused as 'other settings')."""
    from deit_keras.errors import UserInputError
    from deit_keras.testing import digits_config

    config = digits_config(
        tmp_path, model_dir=str(tmp_path / "out"), train_fraction=0.001, batch_size=16
    )
    with pytest.raises(UserInputError, match="fewer than one batch"):
        ablation.check_resumable(config, 1, ["hard"], config.model_dir)
    assert not (tmp_path / "out").exists()


def test_the_generated_sets_table_takes_runs_without_a_teacher_and_a_closed_lead():
    """benchmarks/generated_ablation.py's table: `--rows none` trains no teacher (a KeyError
    before), and a student level with a teacher that has no lead has no "gap closed"."""
    import importlib.util
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "benchmarks", "generated_ablation.py")
    spec = importlib.util.spec_from_file_location("generated_ablation", path)
    module = importlib.util.module_from_spec(spec)
    search_path = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = search_path  # the script puts the repository first for itself

    def top1(mean):
        return {"top1": {"mean": mean, "std": 0.0, "n": 1, "values": [mean]}}

    alone = module.table({"shapes": {"none": top1(0.5)}}, ["none"])
    assert alone.splitlines()[-1].startswith("| shapes | – | 0.5000")
    level = {"teacher": top1(0.5), "none": top1(0.5), "feature": top1(0.6)}
    assert module.table({"glyphs": level}, ["none", "feature"]).endswith("| +0.1000 | – |")
    lead = {"teacher": top1(0.9), "none": top1(0.5), "feature": top1(0.7)}
    assert module.table({"objects": lead}, ["none", "feature"]).endswith("| +0.2000 | 50% |")
