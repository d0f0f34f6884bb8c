"""The machine a benchmark runs on: CPU model and vector features, threads, memory.

Read from `/proc/cpuinfo` (Linux); elsewhere the model is `platform.processor()`
and the features are unknown (empty). Nothing here imports TensorFlow, so
`benchmarks/` drivers that must stay small can use it.
"""

import os
import platform
import resource
import sys

# The flags that decide which kernels a runtime can use (`/proc/cpuinfo` names):
# 256-bit FMA, 512-bit, int8 dot products (VNNI), bf16, and Intel's AMX tiles.
CPU_FEATURES = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


def cpuinfo_fields(path: str = "/proc/cpuinfo") -> dict:
    """The first processor's `key: value` lines of `path` ({} where there is none)."""
    if not os.path.exists(path):
        return {}
    fields = {}
    with open(path, encoding="utf-8", errors="replace") as cpuinfo:
        for line in cpuinfo:
            if not line.strip():
                break  # the first processor's block ends at a blank line
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    return fields


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; `os.cpu_count()` elsewhere)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_info(cpuinfo_path: str = "/proc/cpuinfo") -> dict:
    """The CPU's model name, vendor, clock and `CPU_FEATURES`, and the CPU counts.

    Args:
        cpuinfo_path: str. The `/proc/cpuinfo` to read (a test passes a fixture).

    Returns:
        A dict: `model`, `model_id` (family, model and stepping numbers: VMs
        often name different CPUs alike), `vendor`, `mhz`, `features` ({flag:
        bool} for each of `CPU_FEATURES`; all False where the flags are
        unknown), `flags_known`, `logical_cpus`, `usable_cpus`, `platform`.
    """
    fields = cpuinfo_fields(cpuinfo_path)
    flags = set(fields.get("flags", "").split())
    return {
        "model": fields.get("model name") or platform.processor() or "unknown",
        "model_id": " ".join(
            f"{key.split()[-1]} {fields[key]}"
            for key in ("cpu family", "model", "stepping")
            if key in fields
        ),
        "vendor": fields.get("vendor_id", ""),
        "mhz": float(fields.get("cpu MHz", "0") or 0),
        "features": {name: name in flags for name in CPU_FEATURES},
        "flags_known": bool(flags),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "platform": platform.platform(),
    }


def features_line(info: dict) -> str:
    """`AMD EPYC (avx2 fma)`: the model and the features it has, for a summary line."""
    present = [name for name, has in info["features"].items() if has]
    return f"{info['model']} ({' '.join(present) or 'no listed vector features'})"


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (`ru_maxrss`)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS


def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def current_rss_mb() -> float | None:
    """This process's resident memory now (`VmRSS`), in MiB; None where /proc is missing."""
    return _status_mb("VmRSS")


def own_peak_rss_mb() -> float | None:
    """This process's peak resident memory since it started its program (`VmHWM`), in MiB.

    A spawned child's `ru_maxrss` starts from its parent's (it is kept across
    exec); `VmHWM` belongs to the new program alone. None where /proc is missing.
    """
    return _status_mb("VmHWM")


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other work on the cores skews timings)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None
