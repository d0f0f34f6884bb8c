"""The timing loop: per-call times, turns, budgets, medians; the host's CPU facts."""

import time

import pytest

from deit_keras.inference import host, timing


def test_interleaved_takes_turns_and_counts_every_call():
    order = []
    steps = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    seconds = timing.interleaved(steps, {"a": 4, "b": 2}, rounds=2)
    assert order == ["a", "a", "b", "a", "a", "b"]
    assert [len(seconds["a"]), len(seconds["b"])] == [4, 2]
    assert all(value >= 0 for value in seconds["a"] + seconds["b"])
    seconds = timing.interleaved(steps, {"a": 2, "b": 5}, rounds=3)  # fewer than rounds, uneven
    assert [len(seconds["a"]), len(seconds["b"])] == [2, 5]


def test_time_calls_measures_each_call():
    seconds = timing.time_calls(lambda: time.sleep(0.01), 3)
    assert len(seconds) == 3 and all(0.009 < value < 0.5 for value in seconds)


def test_warm_up_reports_the_last_call_not_the_compiling_first():
    """The first calls trace and compile: the estimate of a call from then on is the last."""
    delays = iter([0.05, 0.001, 0.001])
    assert timing.warm_up(lambda: time.sleep(next(delays)), 3) < 0.01


def test_summarize_median_p90_and_images_per_second():
    summary = timing.summarize([0.1, 0.2, 0.3, 0.4, 1.0], batch_size=8)
    assert summary["calls"] == 5 and summary["batch_size"] == 8
    assert summary["median_ms"] == pytest.approx(300.0)
    assert summary["p90_ms"] == pytest.approx(760.0)  # numpy's linear interpolation
    assert summary["mean_ms"] == pytest.approx(400.0)
    assert summary["images_per_s"] == pytest.approx(8 / 0.3)
    with pytest.raises(ValueError, match="at least one"):
        timing.summarize([], 1)


def test_calls_for_budget_is_clipped():
    assert timing.calls_for_budget(0.1, 2.0) == 20
    assert timing.calls_for_budget(10.0, 2.0) == timing.MIN_CALLS
    assert timing.calls_for_budget(1e-9, 2.0) == timing.MAX_CALLS


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
stepping\t: 8
cpu MHz\t\t: 2000.000
flags\t\t: fpu sse avx2 fma avx512f avx512_vnni amx_tile amx_int8

processor\t: 1
model name\t: a second processor, not read
"""


def test_cpu_info_reads_model_and_features(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    info = host.cpu_info(str(path))
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["model_id"] == "family 6 model 143 stepping 8"
    assert info["mhz"] == 2000.0 and info["flags_known"]
    assert list(info["features"]) == list(host.CPU_FEATURES)
    present = {name for name, has in info["features"].items() if has}
    assert present == {"avx2", "fma", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"}
    line = host.features_line(info)
    assert line.startswith("Intel(R) Xeon(R) Platinum 8480+ (avx2 fma avx512f")


def test_cpu_info_without_proc(tmp_path):
    info = host.cpu_info(str(tmp_path / "missing"))
    assert not info["flags_known"] and not any(info["features"].values())
    assert info["usable_cpus"] >= 1 and info["model"] and info["model_id"] == ""


def test_rss_is_measured():
    assert host.peak_rss_mb() > 10
    current, own_peak = host.current_rss_mb(), host.own_peak_rss_mb()
    assert current is None or 10 < current <= own_peak <= host.peak_rss_mb() + 1
