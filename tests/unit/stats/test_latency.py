"""Latency summaries and histograms (--metrics-config), as units."""

from __future__ import annotations

import pytest

from kiln.errors import InvalidArgumentError
from kiln.stats.latency import LatencyOptions, LatencyWindow


def test_metrics_config_parsing() -> None:
    opts = LatencyOptions.parse(["summary_latencies=true", "summary_quantiles=0.5:0.05,0.99:0.001"])
    assert opts.summaries and not opts.histograms and opts.quantiles == (0.5, 0.99)
    assert not LatencyOptions.parse([]).enabled
    with pytest.raises(InvalidArgumentError, match="unknown setting"):
        LatencyOptions.parse(["nope=1"])
    with pytest.raises(InvalidArgumentError, match="true or false"):
        LatencyOptions.parse(["summary_latencies=maybe"])


def test_window_quantiles_and_buckets() -> None:
    window = LatencyWindow(LatencyOptions(summaries=True, histograms=True))
    for us in range(1, 101):
        window.add(float(us * 10))  # 10 .. 1000 us
    q = window.quantiles()
    assert q[0.5] == pytest.approx(510, abs=10) and q[0.99] == pytest.approx(1000, abs=10)
    buckets = dict(window.cumulative_buckets())
    assert buckets["100"] == 10 and buckets["1000"] == 100 and buckets["+Inf"] == 100
