"""Images/s of `predict_on_batch` (or `model(images)`) in two checkouts of deit_keras, interleaved.

Each turn runs one worker process per checkout (`PYTHONPATH` set to it), the
two one after the other, so both see the same machine load; the ratio of a
turn is after / before. For a change to the library's inference path: make a
worktree of the commit before it (`git worktree add /tmp/before HEAD~1`).

    python benchmarks/checkout_ab.py --before /tmp/before --after . \\
        [--model deit_tiny_distilled_patch16_224] [--batch 32] [--turns 5] [--seconds 12] \\
        [--call predict_on_batch|call]
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

WORKER = """
import json, sys, time
import numpy as np
import deit_keras
model = deit_keras.create_model(sys.argv[1])
images = np.random.default_rng(0).standard_normal(
    (int(sys.argv[2]), model.image_size, model.image_size, model.in_channels), dtype=np.float32)
if sys.argv[4] == "call":
    step = lambda: np.asarray(model(images, training=False))
else:
    step = lambda: model.predict_on_batch(images)
for _ in range(3):
    step()
times, start = [], time.perf_counter()
while time.perf_counter() - start < float(sys.argv[3]) or len(times) < 5:
    tick = time.perf_counter()
    step()
    times.append(time.perf_counter() - tick)
print(json.dumps({"package": deit_keras.__file__, "seconds": float(np.median(times))}))
"""


def images_per_second(checkout, model, batch, seconds, call):
    environment = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
    result = subprocess.run(
        [sys.executable, "-c", WORKER, model, str(batch), str(seconds), call],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    expected = os.path.join(os.path.abspath(checkout), "deit_keras")
    if not measured["package"].startswith(expected):
        sys.exit(f"{checkout}: the worker imported {measured['package']}, not that checkout's.")
    return batch / measured["seconds"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", required=True)
    parser.add_argument("--model", default="deit_tiny_distilled_patch16_224")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument(
        "--call",
        choices=("predict_on_batch", "call"),
        default="predict_on_batch",
        help="what is timed: model.predict_on_batch(images) or model(images, training=False)",
    )
    args = parser.parse_args()
    for checkout in (args.before, args.after):
        if not os.path.isdir(os.path.join(checkout, "deit_keras")):
            parser.error(f"not a deit_keras checkout (no deit_keras/ in it). Received: {checkout}")
    turns = []
    for turn in range(args.turns):
        before = images_per_second(args.before, args.model, args.batch, args.seconds, args.call)
        after = images_per_second(args.after, args.model, args.batch, args.seconds, args.call)
        turns.append({"before": before, "after": after, "ratio": after / before})
        print(f"turn {turn}: before {before:.1f} img/s, after {after:.1f}, {after / before:.2f}x")
    ratios = [turn["ratio"] for turn in turns]
    median, low, high = np.median(ratios), min(ratios), max(ratios)
    print(f"median after / before: {median:.2f}x (range {low:.2f}-{high:.2f})")


if __name__ == "__main__":
    main()
