"""The DeiT paper's distillation ablation (Table 3) in miniature, on any dataset.

For each seed a teacher is trained once (or the given one is used) and the
same student is trained with each `distillation_type` (none, soft, hard),
each in its own `model_dir`, through `runner.run_training`. The summary
gives, over seeds, the mean and sample standard deviation of top-1 for the
teacher alone and for each student with inference by the class head, the
distillation head and both (the mean of the two heads' logits, DeiT's
"class+distillation"), plus the mean wall time of a run.

    output_dir/
      seed_<s>/teacher.keras, teacher.json   the seed's teacher and its training time
      seed_<s>/<type>/                       one run's model_dir (results.json, TensorBoard,
                                             student.keras, ablation_config.json)
      ablation.md     the table, with the command line and date
      ablation.json   every run's numbers, curves and wall time, and the summary
      learning_curves.png   validation top-1 per epoch, mean over seeds, per type

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
import numpy as np
from absl import logging

from deit_keras.data.pipeline import dataset_info
from deit_keras.distill.losses import DISTILLATION_TYPES
from deit_keras.errors import UserInputError
from deit_keras.io.atomic import atomic_output, write_text_atomic
from deit_keras.training import callbacks as callbacks_lib
from deit_keras.training import runner
from deit_keras.training import teacher as teacher_lib
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
)
_HEADS = (("top1", "cls+dist"), ("cls_top1", "cls head"), ("dist_top1", "dist head"))
# How a student of each distillation type is named in tables.
TYPE_LABELS = {"none": "no distillation", "soft": "soft distillation", "hard": "hard distillation"}


def check_arguments(num_seeds: int, types) -> tuple:
    """The distillation types as a tuple; ValueError naming a bad seed count or type."""
    types = tuple(types)
    if num_seeds <= 0:
        raise UserInputError(f"seeds must be positive, got {num_seeds}")
    unknown = [name for name in types if name not in DISTILLATION_TYPES]
    if unknown or not types:
        raise UserInputError(
            f"types must be a non-empty list of {', '.join(DISTILLATION_TYPES)}; got "
            f"{','.join(types) or 'nothing'}"
        )
    if len(set(types)) != len(types):
        raise UserInputError(f"types lists a type twice: {','.join(types)}")
    return types


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


def seed_teacher(config: TrainConfig, seed_dir: str) -> tuple[str, float | None]:
    """`(teacher path, training seconds or None)` for the seed whose config is `config`.

    Trains the small CNN (or `--teacher_base`) teacher into `seed_dir` unless it is
    already there; a teacher given by path or name is shared by all seeds.
    """
    if not trains_teacher(config):
        return config.teacher, None
    path = os.path.join(seed_dir, "teacher.keras")
    record = os.path.join(seed_dir, "teacher.json")
    if os.path.exists(path) and os.path.exists(record):
        stored = _read_json(record)
        _check_same_config(record, stored["config"], config)
        return path, stored["wall_s"]
    # Progress at WARNING, as the runner's teacher message: the CLIs hide INFO.
    logging.warning("Ablation: training the seed %d teacher -> %s", config.seed, path)
    info = dataset_info(config.dataset, config.data_dir)
    image_size, preprocessing = teacher_lib.student_input(config)
    keras.utils.clear_session()
    keras.mixed_precision.set_global_policy(config.precision)
    keras.utils.set_random_seed(config.seed)
    started = time.time()
    teacher_lib.train_teacher(config, info, image_size, path, preprocessing)
    wall_s = round(time.time() - started, 1)
    record_text = json.dumps({"wall_s": wall_s, "config": _config_key(config)}, indent=1)
    write_text_atomic(record, record_text)
    return path, wall_s


def validation_curve(model_dir: str, name: str = "val_top1") -> list[float]:
    """Per-epoch validation `name` (a fraction) from the run's `history.json`, epoch 0 first."""
    records = callbacks_lib.read_history(model_dir)
    if not records:
        raise UserInputError(
            f"{model_dir} has no {callbacks_lib.HISTORY_FILE} (a run written before runs "
            "recorded their history): delete that folder and rerun the ablation to redo it."
        )
    return [record[name] for record in records if name in record]


def _run_one(config: TrainConfig) -> dict:
    model_dir = config.model_dir
    results_path = os.path.join(model_dir, "results.json")
    key_path = os.path.join(model_dir, "ablation_config.json")
    if os.path.exists(key_path):  # also guards a killed run's backup against new settings
        _check_same_config(key_path, _read_json(key_path), config)
    else:
        os.makedirs(model_dir, exist_ok=True)
        write_text_atomic(key_path, json.dumps(_config_key(config), indent=1))
    if os.path.exists(results_path):
        logging.warning("Ablation: reusing %s", results_path)
        results, reused = _read_json(results_path), True
    else:
        logging.warning(
            "Ablation: seed %d, distillation %s -> %s",
            config.seed,
            config.distillation_type,
            model_dir,
        )
        keras.utils.clear_session()
        results, reused = runner.run_training(config), False
    run = {"seed": config.seed, "type": config.distillation_type, "model_dir": model_dir}
    run.update({key: results[key] for key, _ in _HEADS if key in results})
    if "teacher_top1" in results:
        run["teacher_top1"] = results["teacher_top1"]
    run.update(wall_s=results["wall_s"], reused=reused, val_top1=validation_curve(model_dir))
    return run


def _stats(values: list) -> dict | None:
    values = [value for value in values if value is not None]
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values), "values": values}


def summarize(runs: list[dict], teachers: list[dict], types) -> dict:
    """`{row: {metric: {mean, std (sample, n-1), n, values}}}`; rows: teacher, then types."""
    summary = {}
    if teachers:
        summary["teacher"] = {
            "top1": _stats([teacher["top1"] for teacher in teachers]),
            "wall_s": _stats([teacher["wall_s"] for teacher in teachers]),
        }
    for name in types:
        rows = [run for run in runs if run["type"] == name]
        row = {key: _stats([run.get(key) for run in rows]) for key, _ in _HEADS}
        row["wall_s"] = _stats([run["wall_s"] for run in rows])
        curves = [run["val_top1"] for run in rows if run["val_top1"]]
        length = min((len(curve) for curve in curves), default=0)
        row["val_top1"] = [statistics.fmean(c[epoch] for c in curves) for epoch in range(length)]
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


def markdown_table(report: dict) -> str:
    """ablation.md: the command, the date, the settings and the table of `report["summary"]`."""
    config, summary = report["config"], report["summary"]
    lines = [
        "# Distillation ablation (DeiT, Table 3)",
        "",
        f"`{report['command']}`" if report["command"] else "",
        "",
        f"{report['date']}; dataset {config['dataset']}, student {config['model']}, "
        f"{config['epochs']} epochs, seeds {', '.join(map(str, report['seeds']))}. "
        "Top-1 accuracy (a fraction, as in the Keras logs and results.json) on the "
        "evaluation split, mean ± sample std over seeds; "
        "cls+dist is the inference output (the mean of both heads' logits).",
        "",
        "| run | top-1 cls+dist | cls head | dist head | mean wall / run (s) |",
        "|---|---|---|---|---|",
    ]
    if "teacher" in summary:
        teacher = summary["teacher"]
        if report["teacher_trained"]:
            name = config["teacher_base"] or "small CNN"
        else:
            name = os.path.basename(config["teacher"])
        lines.append(
            f"| teacher ({name}) | {stats_cell(teacher['top1'])} | – | – | "
            f"{_seconds(teacher.get('wall_s'))} |"
        )
    for name in report["types"]:
        row = summary[name]
        heads = " | ".join(stats_cell(row.get(key)) for key, _ in _HEADS)
        lines.append(f"| student, {TYPE_LABELS[name]} | {heads} | {_seconds(row['wall_s'])} |")
    return "\n".join(lines) + "\n"


def curves_png(curves: dict, path: str, size: tuple[int, int] = (560, 360)) -> None:
    """Writes a PIL line plot of `{type: [top-1 per epoch]}` to `path` (PNG, atomically)."""
    from PIL import Image, ImageDraw

    colours = {"none": (90, 90, 90), "soft": (40, 120, 220), "hard": (205, 45, 5)}
    width, height = size
    left, right, top, bottom = 52, 120, 28, 40
    everything = [value for curve in curves.values() for value in curve] or [0.0, 1.0]
    low = max(0.0, np.floor(min(everything) * 10) / 10)
    high = min(1.0, np.ceil(max(everything) * 10) / 10)
    high = high if high > low else low + 0.1
    epochs = max((len(curve) for curve in curves.values()), default=1)
    figure = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(figure)
    ink = (30, 30, 30)

    def point(epoch, value):
        x = left + (width - left - right) * epoch / max(epochs - 1, 1)
        y = top + (height - top - bottom) * (high - value) / (high - low)
        return x, y

    draw.text((left, 8), "validation top-1 (fraction), mean over seeds", fill=ink)
    draw.rectangle([left, top, width - right, height - bottom], outline=ink)
    for tick in np.linspace(low, high, 6):
        _, y = point(0, tick)
        draw.line([left - 4, y, left, y], fill=ink)
        draw.text((8, y - 6), f"{tick:.2f}", fill=ink)
    for epoch in range(epochs):
        if epochs <= 12 or epoch % int(np.ceil(epochs / 10)) == 0 or epoch == epochs - 1:
            x, y = point(epoch, low)
            draw.line([x, y, x, y + 4], fill=ink)
            draw.text((x - 3, y + 6), str(epoch + 1), fill=ink)
    draw.text((left + (width - left - right) // 2 - 16, height - 16), "epoch", fill=ink)
    for index, (name, curve) in enumerate(curves.items()):
        colour = colours.get(name, ink)
        points = [point(epoch, value) for epoch, value in enumerate(curve)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        legend_y = top + 8 + 18 * index
        draw.line([width - right + 10, legend_y + 6, width - right + 30, legend_y + 6], colour, 2)
        draw.text((width - right + 36, legend_y), name, fill=ink)
    with atomic_output(path) as temporary:
        figure.save(temporary, format="PNG")


def run_ablation(
    config: TrainConfig, num_seeds: int = 3, types=DISTILLATION_TYPES, command: str = ""
) -> dict:
    """Runs the ablation under `config.model_dir`; returns the report also in ablation.json.

    Args:
        config: TrainConfig. The student's run; its `model_dir` is the ablation's
            output directory and `seed` the first seed.
        num_seeds: int > 0. Seeds `config.seed`, `config.seed + 1`, ...
        types: distillation types to compare, a subset of none, soft, hard.
        command: str. The command line, shown at the top of ablation.md.

    Returns:
        dict with `runs` (one per seed and type: top-1 per head, teacher_top1,
        wall_s, val_top1 per epoch, model_dir), `teachers`, `summary`
        (`summarize`), `seeds`, `types`, `config`, `command`, `date` and the
        paths written (`markdown`, `json`, `curves`).
    """
    types = check_arguments(num_seeds, types)
    config.validate()
    output_dir = config.model_dir
    seeds = [config.seed + index for index in range(num_seeds)]
    runs, teachers = [], []
    for seed in seeds:
        seed_dir = os.path.join(output_dir, f"seed_{seed}")
        seed_config = dataclasses.replace(config, seed=seed)
        teacher, teacher_wall = config.teacher, None
        if any(name != "none" for name in types):
            teacher, teacher_wall = seed_teacher(seed_config, seed_dir)
        seed_runs = []
        for name in types:
            model_dir = os.path.join(seed_dir, name)
            run_config = dataclasses.replace(
                seed_config,
                distillation_type=name,
                model_dir=model_dir,
                output=os.path.join(model_dir, "student.keras"),
                # A `none` run has no teacher: it keeps the given setting, so the same run
                # is recognised whether or not this call also trains the seed's teacher
                # (e.g. `--types=none` and `--types=hard,soft` run side by side).
                teacher=config.teacher if name == "none" else teacher,
            )
            seed_runs.append(_run_one(run_config))
        distilled = [run for run in seed_runs if "teacher_top1" in run]
        if distilled:
            top1 = distilled[0]["teacher_top1"]
            teachers.append({"seed": seed, "path": teacher, "top1": top1, "wall_s": teacher_wall})
        runs += seed_runs
    report = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seeds": seeds,
        "types": list(types),
        "teacher_trained": trains_teacher(config),
        "config": json.loads(json.dumps(dataclasses.asdict(config))),
        "runs": runs,
        "teachers": teachers,
        "summary": summarize(runs, teachers, types),
        "markdown": os.path.join(output_dir, "ablation.md"),
        "json": os.path.join(output_dir, "ablation.json"),
        "curves": os.path.join(output_dir, "learning_curves.png"),
    }
    curves = {name: report["summary"][name]["val_top1"] for name in types}
    curves_png(curves, report["curves"])
    write_text_atomic(report["markdown"], markdown_table(report))
    write_text_atomic(report["json"], json.dumps(report, indent=1))
    logging.info("Wrote %s", report["markdown"])
    return report
