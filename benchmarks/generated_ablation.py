"""Issue #12 item 4: the distillation ablation on generated small image-folder datasets.

    python benchmarks/generated_ablation.py [--datasets shapes,glyphs,objects] [--seeds 3]
        [--rows none,feature] [--flagfile experiments/small_data.cfg]
        [--data_root /tmp/deit_generated] [--output_dir runs/ablation_generated]
        [--extra_flags=--epochs=4]

For each dataset of `deit_keras.data.synthetic` (a few classes of objects drawn at
random positions on clutter or textures, ~1,000 training images; nothing committed:
they are drawn here, the same bytes for the same seed) it runs, in a fresh process,

    python -m deit_keras.ablate --flagfile=<flagfile> --dataset=folder:<data_root>/<name>
        --output_dir=<output_dir>/<name> --seeds=N --rows=...

with the same flagfile for every dataset (nothing tuned per dataset), then writes one
table of every dataset's teacher and students (mean ± std over seeds) to
`<output_dir>/generated_ablation.md` and `benchmarks/results/generated_ablation.json`.
A rerun skips the finished runs (`deit_keras.ablate` resumes).
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deit_keras.data import synthetic  # noqa: E402
from deit_keras.io.atomic import write_text_atomic  # noqa: E402
from deit_keras.training.ablation import stats_cell  # noqa: E402
from deit_keras.training.ablation_rows import ROWS_BY_NAME  # noqa: E402

_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(synthetic.DATASETS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", default="none,feature")
    parser.add_argument("--flagfile", default="experiments/small_data.cfg")
    parser.add_argument("--data_root", default="/tmp/deit_generated")
    parser.add_argument("--output_dir", default="runs/ablation_generated")
    parser.add_argument("--extra_flags", default="", help="More deit_keras.ablate flags.")
    parser.add_argument("--results", default=os.path.join(_RESULTS, "generated_ablation.json"))
    return parser.parse_args(argv)


def ablation_command(args, name: str) -> list[str]:
    """The `deit_keras.ablate` command line of dataset `name`."""
    return [
        sys.executable,
        "-m",
        "deit_keras.ablate",
        f"--flagfile={args.flagfile}",
        f"--dataset=folder:{os.path.join(args.data_root, name)}",
        f"--output_dir={os.path.join(args.output_dir, name)}",
        f"--seeds={args.seeds}",
        f"--rows={args.rows}",
        *shlex.split(args.extra_flags),
    ]


def table(summaries: dict, rows) -> str:
    """Markdown: one row per dataset; teacher, each student row, and distillation's gains.

    "gap closed" = (student - none) / (teacher - none), means over seeds: the share of
    the teacher's lead over the paper's undistilled baseline (DeiT without dist token)
    that distillation recovers. Students are read by their inference output.
    """
    students = [ROWS_BY_NAME[name].label for name in rows]
    header = ["dataset", "teacher (small CNN)", *students]
    distilled = [name for name in rows if name != "none"] if "none" in rows else []
    for name in distilled:
        header += [f"{name} - none", f"{name}: gap closed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for dataset, summary in summaries.items():
        teacher = summary.get("teacher", {}).get("top1")  # none: rows without a teacher
        row = [dataset, stats_cell(teacher) if teacher else "–"]
        row += [stats_cell(summary[name]["top1"]) for name in rows]
        for name in distilled:
            none, student = summary["none"]["top1"]["mean"], summary[name]["top1"]["mean"]
            lead = teacher["mean"] - none if teacher else 0.0
            row += [f"{student - none:+.4f}", f"{(student - none) / lead:.0%}" if lead else "–"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = _arguments(argv)
    names = args.datasets.split(",")
    rows = args.rows.split(",")
    summaries, commands = {}, {}
    for name in names:
        synthetic.write_dataset(name, os.path.join(args.data_root, name))
        command = ablation_command(args, name)
        commands[name] = shlex.join(["python", *command[1:]])
        print(commands[name], flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(args.output_dir, name, "ablation.json"), encoding="utf-8") as handle:
            summaries[name] = json.load(handle)["summary"]
    markdown = table(summaries, rows)
    print(markdown)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor()},
        "commands": commands,
        "seeds": args.seeds,
        "summaries": summaries,
        "table": markdown,
    }
    write_text_atomic(os.path.join(args.output_dir, "generated_ablation.md"), markdown + "\n")
    write_text_atomic(args.results, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
