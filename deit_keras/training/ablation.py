"""The DeiT paper's distillation ablation (Table 3) in miniature, on any dataset.

The rows are a table (`ROWS`): each names a student (DeiT without dist token,
or DeiT⚗ with it: the preset of `--model`'s architecture with or without the
token, `models.variants.with_dist_token`) and an objective, as the paper's
Table 3: the teacher; DeiT without dist token trained on labels only (the
paper's baseline), then with usual (soft) and with hard distillation through
its class token; DeiT⚗ with hard distillation through its dist token, read
by the class head, the dist head and both. A further row is one more `Row`.
For each seed a teacher is trained once (or the given one is used) and each
row's student is trained in its own `model_dir`, through
`runner.run_training`. The summary gives, over seeds, the mean and sample
standard deviation of top-1 per row and head, and the mean wall time of a run.

    output_dir/
      seed_<s>/teacher.keras, teacher.json   the seed's teacher and its training time
      seed_<s>/<row>/                        one run's model_dir (results.json, history.json,
                                             TensorBoard, student.keras, ablation_config.json)
      ablation.md     the table, with the command line and date
      ablation.json   every run's numbers, curves and wall time, and the summary
      learning_curves.png   validation top-1 per epoch, mean ± std over seeds, per row

A run whose `results.json` exists is not trained again (a killed ablation
resumes where it stopped; a killed run resumes from its backup); its
`ablation_config.json` must match the current configuration.
"""

import dataclasses
import datetime
import json
import os
import statistics
import time

import keras
from absl import logging

from deit_keras.data.pipeline import dataset_info
from deit_keras.errors import UserInputError
from deit_keras.io.atomic import write_text_atomic
from deit_keras.models.variants import with_dist_token
from deit_keras.training import ablation_plots, runner
from deit_keras.training import callbacks as callbacks_lib
from deit_keras.training import teacher as teacher_lib
from deit_keras.training.ablation_rows import DEFAULT_ROWS, ROWS_BY_NAME, Row, check_arguments
from deit_keras.training.config import TrainConfig

# Settings that do not change a run's numbers; a resumed ablation may differ in them.
_RUN_ONLY = (
    "model_dir",
    "output",
    "distillation_type",
    "progress",
    "resume",
    "export_savedmodel",
    "steps_per_execution",
    "validation_freq",
)


_HEAD_KEYS = ("top1", "cls_top1", "dist_top1")
_TEACHER_COLUMN = {"none": "–", "soft": "soft", "hard": "hard"}


def seed_directory(output_dir: str, seed: int) -> str:
    """Where the ablation under `output_dir` keeps seed `seed`'s teacher and runs."""
    return os.path.join(output_dir, f"seed_{seed}")


def seed_configuration(config: TrainConfig, seed: int) -> TrainConfig:
    """The ablation's `config` at `seed`, its objective left to the rows.

    Feature distillation is one row's setting (`feature`): a flagfile that turns
    it on for single runs (`small_data.cfg`) trains the same teachers and rows.
    """
    return dataclasses.replace(config, seed=seed, feature_distillation=False)


def row_config(config: TrainConfig, row: Row, seed_dir: str, teacher: str | None) -> TrainConfig:
    """The TrainConfig of `row`'s run in `seed_dir/<row>` with the seed's `teacher`."""
    model_dir = os.path.join(seed_dir, row.name)
    return dataclasses.replace(
        config,
        model=with_dist_token(config.model, row.dist_token),
        distillation_type=row.distillation,
        model_dir=model_dir,
        output=os.path.join(model_dir, "student.keras"),
        # A run without distillation has no teacher: it keeps the given setting, so the
        # same run is recognised whether or not this call also trains the seed's teacher
        # (e.g. `--rows=none` and `--rows=hard,soft` run side by side).
        teacher=config.teacher if row.distillation == "none" else teacher,
        **dict(row.settings),
    )


def trains_teacher(config: TrainConfig) -> bool:
    """Whether each seed trains its own teacher (`--teacher_epochs` > 0 and a .keras teacher)."""
    return config.teacher_epochs > 0 and (config.teacher or "").endswith(".keras")


def _config_key(config: TrainConfig) -> dict:
    values = json.loads(json.dumps(dataclasses.asdict(config)))
    return {key: value for key, value in values.items() if key not in _RUN_ONLY}


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _check_same_config(path: str, stored: dict, config: TrainConfig) -> None:
    """ValueError naming the settings in which `stored` (read from `path`) and `config` differ.

    Run-only settings are left out of both: a record written before a setting
    joined `_RUN_ONLY` still matches.
    """
    current = _config_key(config)
    stored = {key: value for key, value in stored.items() if key not in _RUN_ONLY}
    keys = set(stored) | set(current)
    changed = sorted(key for key in keys if stored.get(key) != current.get(key))
    if changed:
        raise UserInputError(
            f"{path} was made with other settings ({', '.join(changed)} differ); "
            "use a new --output_dir or delete that run to train it again."
        )


def check_resumable(config: TrainConfig, num_seeds: int, rows, output_dir: str) -> None:
    """UserInputError naming the first row whose settings are invalid (e.g. a distilling
    row without a teacher, or with one of other classes), or the first finished teacher
    or run under `output_dir` whose settings differ from `config`'s: before anything is
    written, not when its turn comes. A train split (or `train_fraction` subset) smaller
    than one batch is refused too."""
    info = dataset_info(
        config.dataset, config.data_dir, config.bad_images, train_fraction=config.train_fraction
    )
    runner.check_splits(config, info)
    for index in range(num_seeds):
        seed_config = seed_configuration(config, config.seed + index)
        seed_dir = seed_directory(output_dir, seed_config.seed)
        record = os.path.join(seed_dir, "teacher.json")
        if trains_teacher(config) and os.path.exists(record):
            _check_same_config(record, _read_json(record)["config"], seed_config)
        teacher = seed_teacher_path(config, seed_dir)
        for name in rows:
            run_config = row_config(seed_config, ROWS_BY_NAME[name], seed_dir, teacher)
            try:
                run_config.validate()
                teacher_lib.check_teacher_fits(run_config, info)
            except UserInputError as error:
                raise UserInputError(f"Row {name!r}: {error}") from error
            key_path = os.path.join(run_config.model_dir, "ablation_config.json")
            if os.path.exists(key_path):
                _check_same_config(key_path, _read_json(key_path), run_config)


def seed_teacher_path(config: TrainConfig, seed_dir: str) -> str | None:
    """The teacher of the seed in `seed_dir`: its own, or the one given for every seed."""
    return os.path.join(seed_dir, "teacher.keras") if trains_teacher(config) else config.teacher


def seed_teacher(config: TrainConfig, seed_dir: str) -> tuple[str, float | None]:
    """`(teacher path, training seconds or None)` for the seed whose config is `config`.

    Trains the small CNN (or `--teacher_base`) teacher into `seed_dir` unless it is
    already there; a teacher given by path or name is shared by all seeds.
    """
    path = seed_teacher_path(config, seed_dir)
    if not trains_teacher(config):
        return path, None
    record = os.path.join(seed_dir, "teacher.json")
    if os.path.exists(path) and os.path.exists(record):
        stored = _read_json(record)
        _check_same_config(record, stored["config"], config)
        return path, stored["wall_s"]
    # Progress at WARNING, as the runner's teacher message: the CLIs hide INFO.
    logging.warning("Ablation: training the seed %d teacher -> %s", config.seed, path)
    info = dataset_info(config.dataset, config.data_dir, train_fraction=config.train_fraction)
    image_size, preprocessing = teacher_lib.student_input(config)
    keras.utils.clear_session()
    keras.utils.set_random_seed(config.seed)
    started = time.time()
    with runner.process_settings(config):
        teacher_lib.train_teacher(config, info, image_size, path, preprocessing)
    wall_s = round(time.time() - started, 1)
    record_text = json.dumps({"wall_s": wall_s, "config": _config_key(config)}, indent=1)
    write_text_atomic(record, record_text)
    return path, wall_s


def validation_points(model_dir: str, name: str = "val_top1") -> tuple[list[int], list[float]]:
    """`(epochs, values)` of `name` (a fraction) over the validated epochs (1-based), from the
    run's `history.json`: every epoch, or every N with --validation_freq."""
    records = callbacks_lib.read_history(model_dir)
    if not records:
        raise UserInputError(
            f"{model_dir} has no {callbacks_lib.HISTORY_FILE} (a run written before runs "
            "recorded their history): delete that folder and rerun the ablation to redo it."
        )
    points = [(record["epoch"] + 1, record[name]) for record in records if name in record]
    return [epoch for epoch, _ in points], [value for _, value in points]


def _run_one(config: TrainConfig, row: Row, started: float) -> dict:
    model_dir = config.model_dir
    results_path = os.path.join(model_dir, "results.json")
    key_path = os.path.join(model_dir, "ablation_config.json")
    if os.path.exists(key_path):  # also guards a killed run's backup against new settings
        _check_same_config(key_path, _read_json(key_path), config)
    else:
        os.makedirs(model_dir, exist_ok=True)
        write_text_atomic(key_path, json.dumps(_config_key(config), indent=1))
    if os.path.exists(results_path):
        # Reused: finished before this ablation began (not by its --parallel_seeds processes).
        reused = os.path.getmtime(results_path) < started
        if reused:
            logging.warning("Ablation: reusing %s", results_path)
        results = _read_json(results_path)
    else:
        logging.warning("Ablation: seed %d, %s -> %s", config.seed, row.label, model_dir)
        keras.utils.clear_session()
        results, reused = runner.run_training(config), False
    run = {
        "seed": config.seed,
        "row": row.name,
        "distillation": row.distillation,
        "model": config.model,
        "model_dir": model_dir,
    }
    run.update({key: results[key] for key in _HEAD_KEYS if key in results})
    if "teacher_top1" in results:
        run["teacher_top1"] = results["teacher_top1"]
    val_epochs, val_top1 = validation_points(model_dir)
    run.update(wall_s=results["wall_s"], reused=reused, val_top1=val_top1, val_epochs=val_epochs)
    return run


def _stats(values: list) -> dict | None:
    values = [value for value in values if value is not None]
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None  # one value has no spread
    return {"mean": statistics.fmean(values), "std": std, "n": len(values), "values": values}


def _curve(runs: list[dict]) -> tuple[list, list, list]:
    """`(epochs, means, sample stds or None)` of the runs' validation top-1 at the epochs every run
    validated (runs without `val_epochs` validated each epoch): a rerun that adds seeds may
    validate at another `--validation_freq`, and only the same epochs average."""
    curves = []
    for run in runs:
        if run.get("val_top1"):
            epochs = run.get("val_epochs") or range(1, len(run["val_top1"]) + 1)
            curves.append(dict(zip(epochs, run["val_top1"], strict=False)))
    if not curves:
        return [], [], []
    shared = sorted(set.intersection(*(set(curve) for curve in curves)))
    columns = [[curve[epoch] for curve in curves] for epoch in shared]
    means = [statistics.fmean(column) for column in columns]
    stds = [statistics.stdev(column) if len(column) > 1 else None for column in columns]
    return shared, means, stds


def _distinct_teachers(teachers: list[dict]) -> list[dict]:
    """One record per teacher: one given by path serves every seed and is one value, not n."""
    by_teacher = {}
    for teacher in teachers:
        by_teacher.setdefault(teacher.get("path") or teacher["seed"], teacher)
    return list(by_teacher.values())


def summarize(runs: list[dict], teachers: list[dict], rows) -> dict:
    """`{row: {metric: {mean, std (sample, n-1; None for one value), n, values}}}`; rows:
    teacher, then `rows`.

    Each student row also has `val_top1` and `val_top1_std`: per validated epoch
    (`val_epochs`, 1-based), the mean and sample std over seeds of the validation
    top-1 (the row's inference output).
    """
    summary = {}
    if teachers:
        teachers = _distinct_teachers(teachers)
        summary["teacher"] = {
            "top1": _stats([teacher["top1"] for teacher in teachers]),
            "wall_s": _stats([teacher["wall_s"] for teacher in teachers]),
        }
    for name in rows:
        row_runs = [run for run in runs if run["row"] == name]
        row = {key: _stats([run.get(key) for run in row_runs]) for key in _HEAD_KEYS}
        row["wall_s"] = _stats([run["wall_s"] for run in row_runs])
        row["val_epochs"], row["val_top1"], row["val_top1_std"] = _curve(row_runs)
        summary[name] = {key: value for key, value in row.items() if value is not None}
    return summary


def stats_cell(stats, digits=4) -> str:
    """A `_stats` dict as a table cell: "mean ± std" (one value: the mean; none: "–")."""
    if not stats:
        return "–"
    if stats["n"] == 1:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def _seconds(stats):
    return f"{stats['mean']:.0f}" if stats else "–"


def _teacher_name(report: dict) -> str:
    config = report["config"]
    if report["teacher_trained"]:
        return config["teacher_base"] or "small CNN"
    return os.path.basename(config["teacher"])


def _row_lines(row: Row, stats: dict) -> list[str]:
    """The table lines of one student row: one per head it reports."""
    lines = []
    for key, head in row.heads:
        name = f"{row.label}: {head}" if head else row.label
        teacher = _TEACHER_COLUMN[row.distillation]
        if dict(row.settings).get("feature_distillation"):
            teacher += " + features"
        lines.append(
            f"| {name} | {teacher} | {stats_cell(stats.get(key))} | "
            f"{_seconds(stats.get('wall_s'))} |"
        )
    return lines


def markdown_table(report: dict) -> str:
    """ablation.md: the command, the date, the settings and the table of `report["summary"]`."""
    config, summary = report["config"], report["summary"]
    lines = [
        "# Distillation ablation (DeiT, Table 3)",
        "",
        f"`{report['command']}`" if report["command"] else "",
        "",
        f"{report['date']}; dataset {config['dataset']}, students "
        f"{with_dist_token(config['model'], False)} (DeiT) and "
        f"{with_dist_token(config['model'], True)} (DeiT⚗), {config['epochs']} epochs, "
        f"seeds {', '.join(map(str, report['seeds']))}. "
        "Top-1 accuracy (a fraction, as in the Keras logs and results.json) on the "
        "evaluation split, mean ± sample std over seeds. Every student also learns from "
        "the labels; DeiT has no dist token (soft and hard distil through its class "
        "token), DeiT⚗ is read by its class head, its dist head and both "
        "(the mean of their logits, its inference output).",
        "",
        "| method | teacher supervision | top-1 | mean wall / run (s) |",
        "|---|---|---|---|",
    ]
    if "teacher" in summary:
        teacher = summary["teacher"]
        lines.append(
            f"| teacher ({_teacher_name(report)}) | – | {stats_cell(teacher['top1'])} | "
            f"{_seconds(teacher.get('wall_s'))} |"
        )
    for name in report["rows"]:
        lines += _row_lines(ROWS_BY_NAME[name], summary[name])
    return "\n".join(lines) + "\n"


def _plot_curves(report: dict) -> None:
    """learning_curves.png: each row's validation top-1 per epoch, the teacher's final."""
    summary = report["summary"]
    curves = {
        ROWS_BY_NAME[name].label: (
            summary[name]["val_top1"],
            summary[name]["val_top1_std"],
            summary[name].get("val_epochs"),
        )
        for name in report["rows"]
    }
    references = {}
    if "teacher" in summary:
        references[f"teacher ({_teacher_name(report)}), final"] = summary["teacher"]["top1"]
    seeds = len(report["seeds"])
    ablation_plots.learning_curves_png(
        curves,
        report["curves"],
        title=(
            f"{report['config']['dataset']}: validation top-1, mean ± std over "
            f"{seeds} seed{'s' if seeds > 1 else ''}"
        ),
        references=references,
    )


def _seed_runs(
    config: TrainConfig, seed: int, rows, output_dir: str, started: float
) -> tuple[list, dict | None]:
    """The runs of one seed, and its teacher's record (None when no run had a teacher)."""
    seed_dir = seed_directory(output_dir, seed)
    seed_config = seed_configuration(config, seed)
    teacher, teacher_wall = config.teacher, None
    if any(ROWS_BY_NAME[name].distillation != "none" for name in rows):
        teacher, teacher_wall = seed_teacher(seed_config, seed_dir)
    runs = []
    for name in rows:
        row = ROWS_BY_NAME[name]
        runs.append(_run_one(row_config(seed_config, row, seed_dir, teacher), row, started))
    distilled = [run for run in runs if "teacher_top1" in run]
    if not distilled:
        return runs, None
    top1 = distilled[0]["teacher_top1"]
    return runs, {"seed": seed, "path": teacher, "top1": top1, "wall_s": teacher_wall}


def train_seeds(
    config: TrainConfig, num_seeds: int, rows, started: float | None = None
) -> tuple[list, list]:
    """Trains (or reuses) every run of the ablation, writing no report: `(runs, teachers)`.

    What a `--parallel_seeds` seed process does; `run_ablation` then reports. Arguments
    as `run_ablation`'s.
    """
    started = time.time() if started is None else started
    rows = check_arguments(num_seeds, rows)
    config.validate()
    check_resumable(config, num_seeds, rows, config.model_dir)
    runs, teachers = [], []
    for seed in [config.seed + index for index in range(num_seeds)]:
        seed_runs, teacher = _seed_runs(config, seed, rows, config.model_dir, started)
        runs += seed_runs
        teachers += [teacher] if teacher else []
    return runs, teachers


def run_ablation(
    config: TrainConfig,
    num_seeds: int = 3,
    rows=DEFAULT_ROWS,
    command: str = "",
    started: float | None = None,
) -> dict:
    """Runs the ablation under `config.model_dir`; returns the report also in ablation.json.

    Args:
        config: TrainConfig. The student's run; its `model_dir` is the ablation's
            output directory, `seed` the first seed, and `model` the architecture
            (each row takes the preset with or without dist token).
        num_seeds: int > 0. Seeds `config.seed`, `config.seed + 1`, ...
        rows: names of `ROWS` to train. Defaults to the paper's Table 3
            (`DEFAULT_ROWS`).
        command: str. The command line, shown at the top of ablation.md.
        started: float or None. When the command began (`time.time()`); a run
            finished before it counts as reused. Defaults to now.

    Returns:
        dict with `runs` (one per seed and row: row, distillation, model, top-1
        per head, teacher_top1, wall_s, val_top1 per epoch, model_dir), `teachers`,
        `summary` (`summarize`), `seeds`, `rows`, `config`, `command`, `date` and
        the paths written (`markdown`, `json`, `curves`).
    """
    rows = check_arguments(num_seeds, rows)
    runs, teachers = train_seeds(config, num_seeds, rows, started)
    output_dir = config.model_dir
    seeds = [config.seed + index for index in range(num_seeds)]
    report = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seeds": seeds,
        "rows": list(rows),
        "teacher_trained": trains_teacher(config),
        "config": json.loads(json.dumps(dataclasses.asdict(config))),
        "runs": runs,
        "teachers": teachers,
        "summary": summarize(runs, teachers, rows),
        "markdown": os.path.join(output_dir, "ablation.md"),
        "json": os.path.join(output_dir, "ablation.json"),
        "curves": os.path.join(output_dir, "learning_curves.png"),
    }
    _plot_curves(report)
    write_text_atomic(report["markdown"], markdown_table(report))
    write_text_atomic(report["json"], json.dumps(report, indent=1))
    logging.info("Wrote %s", report["markdown"])
    return report
