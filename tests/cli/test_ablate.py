"""`python -m deit_keras.ablate` end to end: two seeds of DeiT hard (class token) vs DeiT⚗
hard on digits, side by side (`--parallel_seeds=2`); every row's names and models:
tests/training/test_ablation.py."""

import json
import os
import statistics
import subprocess

import keras
import numpy as np
import pytest
from PIL import Image

from deit_keras.cli import parallel_seeds
from deit_keras.io import run_lock
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
    "--rows=hard,dist_hard",
    "--parallel_seeds=2",
)


def _read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """(output_dir, extra flags, ablation.json) of 2 seeds x (hard, dist_hard), 1-epoch teachers."""
    tmp_path = tmp_path_factory.mktemp("ablate")
    where = (f"--data_dir={tmp_path / 'tfds'}", f"--output_dir={tmp_path / 'out'}")
    process = run_cli("ablate", *TINY, *where)
    assert process.returncode == 0, process.stderr
    assert "| DeiT, hard distillation (class token) |" in process.stdout
    for seed in (0, 1):  # each seed in its own process, with its own log
        assert f"seed {seed} in its own process on cores" in process.stderr
        log = (tmp_path / "out" / f"seed_{seed}.log").read_text()
        assert f"seed {seed}, DeiT, hard distillation" in log and f"seed {1 - seed}," not in log
    return str(tmp_path / "out"), where, _read_json(tmp_path / "out" / "ablation.json")


def test_each_number_is_a_real_runs(ablation):
    output_dir, _, report = ablation
    assert report["seeds"] == [0, 1] and report["rows"] == ["hard", "dist_hard"]
    assert [(run["seed"], run["row"]) for run in report["runs"]] == [
        (0, "hard"),
        (0, "dist_hard"),
        (1, "hard"),
        (1, "dist_hard"),
    ]
    for run in report["runs"]:
        model_dir = os.path.join(output_dir, f"seed_{run['seed']}", run["row"])
        assert run["model_dir"] == model_dir and not run["reused"]
        results = _read_json(os.path.join(model_dir, "results.json"))
        assert results["distillation"] == run["distillation"] == "hard"
        heads = ("top1", "cls_top1", "dist_top1") if run["row"] == "dist_hard" else ("top1",)
        for key in (*heads, "wall_s"):
            assert run[key] == results[key], key
        assert results["saved_model"] == os.path.join(model_dir, "student.keras")
        assert not os.path.exists(os.path.join(model_dir, "student_savedmodel"))
        # One unit everywhere: fractions, as the Keras logs (issue #12 item 8).
        assert len(run["val_top1"]) == 2 and all(0 <= value <= 1 for value in run["val_top1"])
        assert all(0 <= run[key] <= 1 for key in heads)
        teacher = report["teachers"][run["seed"]]
        seed_dir = os.path.join(output_dir, f"seed_{run['seed']}")
        assert teacher["path"] == os.path.join(seed_dir, "teacher.keras")
        assert teacher["top1"] == results["teacher_top1"] and teacher["wall_s"] > 0
    # Each seed trains its own teacher and students from its own initialisation.
    teachers = [keras.models.load_model(t["path"]).get_weights() for t in report["teachers"]]
    assert any(not np.array_equal(a, b) for a, b in zip(*teachers, strict=True))
    students = {
        (seed, row): keras.models.load_model(
            os.path.join(output_dir, f"seed_{seed}", row, "student.keras")
        )
        for seed in (0, 1)
        for row in ("hard", "dist_hard")
    }
    pairs = zip(students[0, "hard"].get_weights(), students[1, "hard"].get_weights(), strict=True)
    assert any(not np.array_equal(a, b) for a, b in pairs)
    # The paper's rows: hard distillation through the class token of a DeiT without
    # dist token (one head, one token fewer), the ⚗ row through the dist token.
    for seed in (0, 1):
        plain, distilled = students[seed, "hard"], students[seed, "dist_hard"]
        assert not plain.distilled and plain.num_prefix_tokens == 1
        assert distilled.distilled and distilled.num_prefix_tokens == 2
        names = {weight.path for weight in plain.weights}
        assert not any("dist" in name for name in names), sorted(names)
        assert len(plain.weights) < len(distilled.weights)
        assert plain.name == "deit_tiny_patch16_224"


def test_summary_is_mean_and_sample_std_of_the_runs(ablation):
    _, _, report = ablation
    summary = report["summary"]
    assert list(summary) == ["teacher", "hard", "dist_hard"]
    for name, heads in (("hard", ("top1",)), ("dist_hard", ("top1", "cls_top1", "dist_top1"))):
        runs = [run for run in report["runs"] if run["row"] == name]
        for key in (*heads, "wall_s"):
            values = [run[key] for run in runs]
            stats = summary[name][key]
            assert stats["values"] == values and stats["n"] == 2
            assert stats["mean"] == pytest.approx(statistics.fmean(values))
            assert stats["std"] == pytest.approx(abs(values[0] - values[1]) / np.sqrt(2))
        curves = np.array([run["val_top1"] for run in runs])
        np.testing.assert_allclose(summary[name]["val_top1"], curves.mean(axis=0))
        np.testing.assert_allclose(summary[name]["val_top1_std"], curves.std(axis=0, ddof=1))
    assert "dist_top1" not in summary["hard"]
    teacher_top1 = [teacher["top1"] for teacher in report["teachers"]]
    assert summary["teacher"]["top1"]["values"] == teacher_top1
    assert summary["teacher"]["top1"]["std"] == pytest.approx(statistics.stdev(teacher_top1))


def test_table_and_curves_are_written(ablation):
    output_dir, _, report = ablation
    table = open(os.path.join(output_dir, "ablation.md"), encoding="utf-8").read()
    assert "`python -m deit_keras.ablate --flagfile=experiments/digits.cfg" in table
    assert report["date"] in table and "seeds 0, 1" in table
    lines = table.splitlines()
    summary = report["summary"]
    row = "| DeiT⚗, hard distillation (dist token): distil. embedding | hard |"
    row = next(line for line in lines if line.startswith(row))
    dist = summary["dist_hard"]["dist_top1"]
    assert f"{dist['mean']:.4f} ± {dist['std']:.4f}" in row
    row = next(line for line in lines if line.startswith("| DeiT, hard distillation (class"))
    hard = summary["hard"]["top1"]
    assert f"{hard['mean']:.4f} ± {hard['std']:.4f}" in row
    assert any(line.startswith("| teacher (small CNN) |") for line in lines)
    assert "usual distillation" not in table and "no distillation" not in table
    with Image.open(os.path.join(output_dir, "learning_curves.png")) as picture:
        assert picture.format == "PNG" and picture.size == (800, 500)
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20


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
        "--rows=none,medium",
        f"--output_dir={tmp_path / 'out'}",
    )
    assert_one_line_error(process, "medium", "none, soft, hard, dist_hard, dist_labels")
    assert not (tmp_path / "out").exists()
    both = ("--train_fraction=0.5", "--train_fractions=0.1,0.2")  # the first was ignored
    process = run_cli(
        "ablate", "--flagfile=experiments/digits.cfg", *both, f"--output_dir={tmp_path / 'out'}"
    )
    assert_one_line_error(process, "--train_fraction is one point")
    assert not (tmp_path / "out").exists()
    process = run_cli(  # every row saves its own model: --output was taken and not used
        "ablate", "--flagfile=experiments/digits.cfg", "--output", str(tmp_path / "one.keras")
    )
    assert_one_line_error(process, "leave --output out", "one.keras")


def test_a_row_that_cannot_run_is_refused_before_anything_is_written(tmp_path):
    """A distilling row without a teacher: it wrote flags.txt and the row's
    ablation_config.json first, which then refused the corrected command."""
    out = tmp_path / "out"
    common = ["--flagfile=experiments/digits.cfg", "--rows=soft", f"--output_dir={out}"]
    process = run_cli(
        "ablate", *common, "--distillation_type=none", "--nofeature_distillation", "--teacher="
    )
    assert_one_line_error(process, "Row 'soft'", "needs --teacher")
    assert not out.exists()
    # A teacher of other classes (the released ImageNet RegNetY on digits): it was found at
    # the row's turn, after the rows before it had trained.
    process = run_cli(
        "ablate", *common[:2], "--rows=none,hard", f"--output_dir={out}", "--teacher=regnety160"
    )
    assert_one_line_error(process, "Row 'hard'", "released regnety160 teacher predicts the 1000")
    assert not out.exists()


def test_an_output_dir_in_use_is_refused_before_anything_is_written(tmp_path):
    """A running train or ablation in the folder: its flags.txt was overwritten and the
    ablation's tables were written beside its files."""
    out = tmp_path / "out"
    with run_lock.hold(str(out)):
        process = run_cli(
            "ablate", "--flagfile=experiments/digits.cfg", "--rows=none", f"--output_dir={out}"
        )
    assert_one_line_error(process, "is in use by PID")
    assert os.listdir(out) == [run_lock.LOCK_NAME]


def test_parallel_seeds_split_the_cores_and_name_a_failed_seeds_line(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel_seeds.os, "sched_getaffinity", lambda _: {0, 1, 2, 3, 4})
    assert parallel_seeds.core_groups(2) == [[0, 1, 2], [3, 4]]
    assert parallel_seeds.core_groups(6) == [[0, 1, 2, 3, 4]] * 6  # more seeds than cores
    log = tmp_path / "seed_3.log"
    log.write_text("W1202 training\nerror: --teacher_lr must be positive\nW1202 exit\n")
    with pytest.raises(ValueError, match=r"^seed 3 failed \(exit 2\): --teacher_lr"):
        parallel_seeds._raise_failure(3, 2, str(log))
    with pytest.raises(RuntimeError, match="exit 70"):
        parallel_seeds._raise_failure(3, 70, str(log))


def test_a_failed_parallel_rerun_leaves_the_earlier_report_as_it_was(ablation):
    """The seeds' processes train only; the command reports once all are done, so a seed
    that fails leaves the table of the earlier, complete run (not one seed's)."""
    output_dir, where, report = ablation
    before = {name: open(os.path.join(output_dir, name), "rb").read() for name in REPORTS}
    with open(os.path.join(output_dir, "seed_2"), "w") as blocker:  # seed 2's folder cannot be made
        blocker.write("in the way")
    try:
        process = run_cli("ablate", *TINY, *where, "--seeds=3", "--parallel_seeds=3")
    finally:
        os.remove(os.path.join(output_dir, "seed_2"))
    assert process.returncode == 2, process.stderr[-2000:]
    assert "seed 2" in process.stderr
    after = {name: open(os.path.join(output_dir, name), "rb").read() for name in REPORTS}
    assert after == before
    assert _read_json(os.path.join(output_dir, "ablation.json"))["seeds"] == [0, 1]


REPORTS = ("ablation.md", "ablation.json", "learning_curves.png")


def test_a_seeds_process_runs_pinned_to_its_cores_with_its_flags(tmp_path):
    (tmp_path / "seed_probe.py").write_text(
        "import os, sys\nprint(sorted(os.sched_getaffinity(0)), sys.argv[1:])\n"
    )
    cores = [sorted(os.sched_getaffinity(0))[-1]]
    argv = parallel_seeds.child_argv("seed_probe", "/runs/x.flags", 7, cores)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    printed = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    flags = [
        "--flagfile=/runs/x.flags",
        "--seed=7",
        "--seeds=1",
        "--parallel_seeds=1",
        "--noreport",
    ]
    assert printed.strip() == f"{cores} {flags}"
