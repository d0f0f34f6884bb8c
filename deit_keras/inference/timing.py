"""Timing calls: warm-up, per-call wall times, interleaved turns, medians and p90s.

The one timing loop of the package: `deit_keras.benchmark` and the `benchmarks/`
scripts use it. Each call is timed alone with `time.perf_counter`, so a summary
has its median and p90, not only a mean. Several runtimes are timed in turns
(A, B, C, A, B, C, ...), so a change of machine load during the run falls on
all of them alike and their ratios stay fair.
"""

import math
import time
from collections.abc import Callable

import numpy as np

# Calls of a time budget: at least enough for a median, at most enough to end.
MIN_CALLS = 3
MAX_CALLS = 10_000


def time_calls(step: Callable[[], object], calls: int) -> list[float]:
    """Wall seconds of each of `calls` calls of `step()`."""
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return seconds


def warm_up(step: Callable[[], object], calls: int) -> float:
    """Calls `step()` `calls` times (at least once); returns the last call's seconds.

    The first calls compile (XLA, tf.function tracing) and allocate; the last
    one estimates what a call costs from then on.
    """
    return time_calls(step, max(1, calls))[-1]


def calls_for_budget(seconds_per_call: float, budget_s: float) -> int:
    """How many calls fit in `budget_s`, clipped to [`MIN_CALLS`, `MAX_CALLS`]."""
    if seconds_per_call <= 0:
        return MAX_CALLS
    fitting = math.floor(budget_s / seconds_per_call + 1e-9)  # 2.0 // 0.1 is 19.0
    return int(min(MAX_CALLS, max(MIN_CALLS, fitting)))


def interleaved(steps: dict, calls: dict, rounds: int) -> dict:
    """Times each step in turns: `rounds` turns, each runs every step its share of calls.

    Args:
        steps: dict of name -> `step()`.
        calls: dict of name -> how many calls in all (split over the turns).
        rounds: int. Turns; 1 times the steps one after the other.

    Returns:
        dict of name -> list of per-call seconds, every turn's.
    """
    rounds = max(1, rounds)
    seconds = {name: [] for name in steps}
    for turn in range(rounds):
        for name, step in steps.items():
            share = calls[name] // rounds + (turn < calls[name] % rounds)  # all `calls`, no more
            seconds[name] += time_calls(step, share) if share else []
    return seconds


def summarize(seconds: list[float], batch_size: int) -> dict:
    """Median, p90 and mean milliseconds per call, and images/s at the median.

    Args:
        seconds: list of float. Per-call wall seconds.
        batch_size: int. Images per call.

    Returns:
        dict: `batch_size`, `calls`, `median_ms`, `p90_ms`, `mean_ms`,
        `images_per_s` (batch / median call time).
    """
    values = np.asarray(seconds, dtype=np.float64)
    if values.size == 0:
        raise ValueError("summarize needs at least one timed call. Received: seconds=[]")
    median = float(np.median(values))
    return {
        "batch_size": int(batch_size),
        "calls": int(values.size),
        "median_ms": 1e3 * median,
        "p90_ms": 1e3 * float(np.percentile(values, 90)),
        "mean_ms": 1e3 * float(values.mean()),
        "images_per_s": batch_size / median if median > 0 else math.inf,
    }
