"""Triton's CPU metrics from /proc: utilization between scrapes, machine memory."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from kiln.stats.cpu import CpuCollector
from kiln.stats.exposition import render


def _write(proc: Path, busy: int, idle: int) -> None:
    proc.mkdir(exist_ok=True)
    (proc / "stat").write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 0 0 1 0 0 0 0 0 0\n")
    (proc / "meminfo").write_text(
        "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n"
    )


def test_utilization_is_the_busy_share_since_the_last_scrape(tmp_path: Path) -> None:
    _write(tmp_path, busy=100, idle=100)
    collector = CpuCollector(tmp_path)
    _write(tmp_path, busy=175, idle=125)  # 75 of the 100 jiffies since were busy
    assert collector.utilization() == 0.75
    assert collector.utilization() == 0.0  # nothing happened since


def test_the_metrics_parse_with_triton_s_names_and_types(tmp_path: Path) -> None:
    _write(tmp_path, busy=10, idle=10)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CpuCollector(tmp_path))
    families = {f.name: f for f in text_string_to_metric_families(render(registry).decode())}
    assert families["nv_cpu_utilization"].type == "gauge"
    assert families["nv_cpu_memory_total_bytes"].samples[0].value == 1000 * 1024
    assert families["nv_cpu_memory_used_bytes"].samples[0].value == 750 * 1024


def test_the_real_proc_works_here() -> None:
    collector = CpuCollector()
    assert 0.0 <= collector.utilization() <= 1.0
    names = {m.name for m in collector.collect()}
    assert {"nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes"} <= names
