"""The data-efficiency sweep on made-up runs: one ablation per fraction, the table, the plot."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from deit_keras.errors import UserInputError
from deit_keras.training import ablation, ablation_rows, data_efficiency
from deit_keras.training.callbacks import record_epochs


def _fake_training(monkeypatch, trained):
    """run_training replaced by one writing what a real run writes; top-1 grows with data."""

    def fake_run(config):
        trained.append((config.train_fraction, config.distillation_type, config.model_dir))
        bonus = 0.1 if config.distillation_type == "hard" else 0.0
        top1 = min(0.4 + 0.5 * config.train_fraction + bonus + 0.01 * config.seed, 1.0)
        results = {"top1": top1, "cls_top1": top1, "wall_s": 1.0, "teacher_top1": 0.95}
        with open(os.path.join(config.model_dir, "results.json"), "w") as handle:
            json.dump(results, handle)
        record_epochs(config.model_dir, [0], {"val_top1": [top1]})
        return results

    monkeypatch.setattr(ablation.runner, "run_training", fake_run)
    monkeypatch.setattr(ablation, "seed_teacher", lambda config, seed_dir: ("t.keras", 2.0))


def test_one_ablation_per_fraction_then_table_and_plot(tmp_path, monkeypatch):
    from deit_keras.testing import digits_config

    trained = []
    _fake_training(monkeypatch, trained)
    config = digits_config(tmp_path, model_dir=str(tmp_path / "out"))
    result = data_efficiency.run_data_efficiency(config, [1.0, 0.25], 2, ["none", "hard"])
    assert [p["fraction"] for p in result["points"]] == [0.25, 1.0]  # sorted
    # Each fraction trains its rows and seeds in its own folder, with that fraction.
    assert {(f, os.path.relpath(d, tmp_path / "out").split(os.sep)[0]) for f, _, d in trained} == {
        (0.25, "fraction_0.25"),
        (1.0, "fraction_1"),
    }
    assert len(trained) == 2 * 2 * 2
    counts = [p["num_train_images"] for p in result["points"]]
    assert counts[1] == 1437 and 0 < counts[0] < counts[1]  # digits' train split, subset
    # The table: one column per size, each row's mean ± std from its ablation's summary.
    table = open(result["markdown"], encoding="utf-8").read()
    hard = ablation_rows.ROWS_BY_NAME["hard"].label
    expected = 0.4 + 0.5 * 0.25 + 0.1 + 0.005  # mean over seeds 0 and 1
    line = next(row for row in table.splitlines() if row.startswith(f"| {hard} |"))
    assert f"{expected:.4f} ± " in line
    assert f"{counts[0]} (0.25)" in table
    stored = json.load(open(result["json"], encoding="utf-8"))
    assert [p["num_train_images"] for p in stored["points"]] == counts
    with Image.open(result["plot"]) as image:
        assert image.size == (800, 500)
        assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 20


@pytest.mark.parametrize("fractions", [[], [0.0], [1.5], ["a"]])
def test_bad_fractions_are_one_line(fractions):
    with pytest.raises(UserInputError, match="train_fractions must be numbers in"):
        data_efficiency.check_fractions(fractions)


def test_fractions_that_would_share_a_folder_are_refused_before_any_run():
    with pytest.raises(UserInputError, match="fraction_0.1, fraction_0.1"):
        data_efficiency.check_fractions([0.1, 0.1000001])
    assert data_efficiency.check_fractions([0.1, 0.10001]) == [0.1, 0.10001]
