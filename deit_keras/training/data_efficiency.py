"""How data-efficient is distillation? The ablation at several training-set sizes.

For each fraction of the training split (a class-balanced, seeded subset:
`data.subsets`), the ablation (`training.ablation.run_ablation`) runs into
`output_dir/fraction_<f>/`; then `data_efficiency.{md,json,png}` give each row's
top-1 (its inference output: both heads for DeiT⚗) and the teacher's against the
number of training images: where does distillation help most?
"""

import dataclasses
import datetime
import json
import os
import time

from absl import logging

from deit_keras.data.pipeline import dataset_info
from deit_keras.errors import UserInputError
from deit_keras.io.atomic import write_text_atomic
from deit_keras.training import ablation, ablation_plots, ablation_rows
from deit_keras.training.config import TrainConfig


def check_fractions(fractions) -> list[float]:
    """Sorted, distinct fractions in (0, 1]; `UserInputError` otherwise."""
    try:
        values = sorted({float(fraction) for fraction in fractions})
    except (TypeError, ValueError):
        values = []
    if not values or not all(0.0 < value <= 1.0 for value in values):
        raise UserInputError(
            "train_fractions must be numbers in (0, 1], e.g. 0.1,0.25,0.5,1.0. "
            f"Received: train_fractions={','.join(map(str, fractions))}"
        )
    folders = [os.path.basename(_fraction_dir("", value)) for value in values]
    if len(set(folders)) != len(folders):  # each fraction's runs live in its own folder
        raise UserInputError(
            "train_fractions must differ in their first 6 significant digits (each names "
            f"a folder, {', '.join(folders)}). Received: "
            f"train_fractions={','.join(map(str, fractions))}"
        )
    return values


def _fraction_dir(output_dir: str, fraction: float) -> str:
    return os.path.join(output_dir, f"fraction_{fraction:g}")


def _series(points: list[dict], rows) -> dict:
    """`{label: [(num_images, mean, std), ...]}` for the teacher and each row."""
    series = {}
    for point in points:
        summary = point["report"]["summary"]
        for name in ["teacher", *rows]:
            stats = summary.get(name, {}).get("top1")
            if not stats:
                continue
            label = "teacher" if name == "teacher" else ablation_rows.ROWS_BY_NAME[name].label
            series.setdefault(label, []).append(
                (point["num_train_images"], stats["mean"], stats["std"])
            )
    return series


def markdown_table(result: dict) -> str:
    """data_efficiency.md: top-1 (mean ± std over seeds) per row and training-set size."""
    points = result["points"]
    header = " | ".join(f"{p['num_train_images']} ({p['fraction']:g})" for p in points)
    lines = [
        "# Data efficiency (top-1 against training images)",
        "",
        f"`{result['command']}`" if result["command"] else "",
        "",
        f"{result['date']}; dataset {result['dataset']}, seeds per point {result['seeds']}. "
        "Top-1 (a fraction) on the evaluation split, mean ± sample std over seeds; each "
        "fraction is a class-balanced subset of the training split, drawn by the seed (the "
        "subsets of two fractions are not nested); a teacher the run trains is trained on "
        "the same subset.",
        "",
        f"| row | {header} |",
        "|---|" + "---|" * len(points),
    ]
    for name in ["teacher", *result["rows"]]:
        label = "teacher" if name == "teacher" else ablation_rows.ROWS_BY_NAME[name].label
        cells = [
            ablation.stats_cell(p["report"]["summary"].get(name, {}).get("top1")) for p in points
        ]
        if any(cell != "–" for cell in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fraction_configs(config: TrainConfig, fractions) -> list[TrainConfig]:
    """The ablation's TrainConfig at each fraction, in `<model_dir>/fraction_<f>/`."""
    return [
        dataclasses.replace(
            config, train_fraction=fraction, model_dir=_fraction_dir(config.model_dir, fraction)
        )
        for fraction in fractions
    ]


def run_data_efficiency(
    config: TrainConfig,
    fractions,
    num_seeds: int = 3,
    rows=ablation_rows.DEFAULT_ROWS,
    command: str = "",
    started: float | None = None,
) -> dict:
    """The ablation at each training fraction under `config.model_dir`.

    Args:
        config: TrainConfig of the ablation (its `train_fraction` is replaced).
        fractions: fractions of the training split in (0, 1].
        num_seeds: int. Seeds per fraction.
        rows: the ablation's rows.
        command: str. The command line, shown at the top of the table.
        started: float or None. When the command began (`run_ablation`).

    Returns:
        dict with `points` (per fraction: fraction, num_train_images, the
        ablation's report), `rows`, `seeds`, `dataset`, `date`, `command` and the
        paths written (`markdown`, `json`, `plot`).
    """
    fractions = check_fractions(fractions)
    started = time.time() if started is None else started
    output_dir = config.model_dir
    points = []
    for fraction, fraction_config in zip(
        fractions, fraction_configs(config, fractions), strict=True
    ):
        report = ablation.run_ablation(
            fraction_config, num_seeds, rows, command=command, started=started
        )
        info = dataset_info(
            config.dataset, config.data_dir, config.bad_images, train_fraction=fraction
        )
        points.append(
            {"fraction": fraction, "num_train_images": info.num_train_examples, "report": report}
        )
    result = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "dataset": config.dataset,
        "seeds": num_seeds,
        "rows": list(rows),
        "points": points,
        "markdown": os.path.join(output_dir, "data_efficiency.md"),
        "json": os.path.join(output_dir, "data_efficiency.json"),
        "plot": os.path.join(output_dir, "data_efficiency.png"),
    }
    ablation_plots.data_efficiency_png(
        _series(points, rows),
        result["plot"],
        title=f"{config.dataset}: top-1 against training images, mean ± std over seeds",
    )
    write_text_atomic(result["markdown"], markdown_table(result))
    slim = dict(result, points=[_slim(point) for point in points])
    write_text_atomic(result["json"], json.dumps(slim, indent=1))
    logging.info("Wrote %s", result["markdown"])
    return result


def _slim(point: dict) -> dict:
    """A point for the JSON: its ablation's summary and where its report is."""
    report = point["report"]
    return {
        "fraction": point["fraction"],
        "num_train_images": point["num_train_images"],
        "summary": report["summary"],
        "ablation": report["json"],
    }
