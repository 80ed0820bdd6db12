"""Triton's CPU metrics: ``nv_cpu_utilization`` (the machine's, 0 to 1, since the previous scrape) and
``nv_cpu_memory_total_bytes`` / ``nv_cpu_memory_used_bytes`` (the machine's memory), read from ``/proc``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

PROC = Path("/proc")


def _cpu_times(proc: Path) -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``; None where there is no such file."""
    try:
        first = (proc / "stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not first or first[0] != "cpu":
        return None
    values = [int(v) for v in first[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


def _memory(proc: Path) -> tuple[int, int] | None:
    """(total, used) bytes from ``/proc/meminfo``: used = MemTotal - MemAvailable."""
    try:
        fields = dict(
            line.split(":", 1) for line in (proc / "meminfo").read_text().splitlines() if ":" in line
        )
        total = int(fields["MemTotal"].split()[0]) * 1024
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    return total, total - available


class CpuCollector(Collector):
    def __init__(self, proc: Path = PROC) -> None:
        self.proc = proc
        self._last = _cpu_times(proc)
        self._lock = threading.Lock()

    def utilization(self) -> float:
        now = _cpu_times(self.proc)
        with self._lock:
            last, self._last = self._last, now
        if now is None or last is None or now[1] <= last[1]:
            return 0.0
        return max(0.0, min(1.0, (now[0] - last[0]) / (now[1] - last[1])))

    def collect(self) -> Iterator[Metric]:
        utilization = Metric("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", "gauge")
        utilization.add_sample("nv_cpu_utilization", {}, self.utilization())
        yield utilization
        memory = _memory(self.proc)
        if memory is None:
            return
        for name, doc, value in (
            ("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", memory[0]),
            ("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", memory[1]),
        ):
            metric = Metric(name, doc, "gauge")
            metric.add_sample(name, {}, value)
            yield metric
