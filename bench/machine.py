"""Machine facts and the one timer of the benchmarks: versions, CPUs, GPU, load, CPU seconds.

Every benchmark result carries :func:`environment`; every timed piece of work goes
through :class:`Usage` (wall seconds and CPU seconds of this process, all its threads,
plus its child processes: DataLoader and DALI worker processes).
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Optional, Tuple

__all__ = ["environment", "usable_cpus", "load_average", "median_ms", "Usage"]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), else the CPU count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_average() -> Optional[float]:
    """The 1-minute load average, None where the platform has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> Optional[str]:
    try:
        mod = __import__(module, fromlist=["__version__"])
    except Exception:  # a missing or broken optional package is reported as None
        return None
    return str(getattr(mod, "__version__", None))


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _memory_gb() -> Optional[float]:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (AttributeError, ValueError, OSError):
        return None


def environment() -> Dict[str, Any]:
    """Versions, CPU, memory, GPU and load of this machine, as plain JSON-able data."""
    gpu = cuda = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu, cuda = torch.cuda.get_device_name(0), torch.version.cuda
    except Exception:  # torch missing or CUDA broken: report "no GPU" rather than fail
        pass
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "dali": _version("nvidia.dali"),
        "orderdp_dali": _version("orderdp_dali"),
        "git_commit": _git_commit(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable_cpus(),
        "memory_gb": _memory_gb(),
        "gpu": gpu,
        "cuda": cuda,
        "load_average": load_average(),
        "argv": list(sys.argv),
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _children_cpu() -> Dict[int, float]:
    """CPU seconds of every live child process of this one (Linux /proc; empty elsewhere)."""
    me = os.getpid()
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: Dict[int, float] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == me:
            out[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _cpu_snapshot() -> Tuple[float, Dict[int, float]]:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system, _children_cpu()


class Usage:
    """Wall and CPU seconds of a block: ``with Usage() as u: ...; u.wall_s, u.cpu_s``.

    CPU = this process (every thread, DALI's included) + live children (worker processes)
    + children reaped meanwhile. Other jobs on a shared machine stretch wall time but
    hardly change the CPU seconds a piece of work costs.
    """

    wall_s: float = 0.0
    cpu_s: float = 0.0

    def __enter__(self) -> "Usage":
        self._cpu0 = _cpu_snapshot()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall_s = time.perf_counter() - self._t0
        own, kids = _cpu_snapshot()
        self.cpu_s = (own - self._cpu0[0]) + sum(kids[p] - self._cpu0[1][p] for p in kids.keys() & self._cpu0[1].keys())


def median_ms(fn: Callable[[int], Any], repeats: int) -> Dict[str, float]:
    """Median and min wall ms of ``fn(k)`` for k = 1..repeats, after ``fn(0)`` as a warm-up, and the
    median CPU ms of this process (steadier than wall time on a shared machine). For calls of
    milliseconds, where :class:`Usage`'s scan of child processes would weigh on the CPU figure."""
    fn(0)
    wall, cpu = [], []
    for k in range(1, repeats + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn(k)
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return {"median_ms": statistics.median(wall), "min_ms": min(wall), "cpu_ms": statistics.median(cpu)}
