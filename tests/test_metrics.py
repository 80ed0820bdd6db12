"""Latency summaries/histograms behind --metrics-config, as units and on a real server."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from kiln.errors import InvalidArgumentError
from kiln.stats.latency import LatencyOptions, LatencyWindow
from servers import KilnProcess


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


def test_server_exposes_summaries_and_histograms(test_repo: Path, tmp_path: Path) -> None:
    extra = ["--metrics-config", "summary_latencies=true", "--metrics-config", "histogram_latencies=true"]
    with KilnProcess([test_repo], "--strict-readiness", "false", *extra, log_dir=tmp_path) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        a = np.ones((1, 16), np.float32)
        inputs = [httpclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for t in inputs:
            t.set_data_from_numpy(a)
        for _ in range(5):
            client.infer("add_sub", inputs)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    lines = [x for x in text.splitlines() if 'model="add_sub"' in x]
    assert any(x.startswith("nv_inference_request_summary_us{") and 'quantile="0.99"' in x for x in lines)
    assert any(x.startswith("nv_inference_queue_summary_us_count{") and x.endswith(" 5.0") for x in lines)
    assert any(x.startswith("kiln_inference_request_duration_histogram_us_bucket{") and 'le="+Inf"' in x
               and x.endswith(" 5.0") for x in lines)  # fmt: skip


def test_bad_metrics_config_is_a_startup_error(test_repo: Path, tmp_path: Path) -> None:
    server = KilnProcess([test_repo], "--metrics-config", "bogus", log_dir=tmp_path).start(wait=False)
    try:
        assert server.wait_exit(60) == 1
    finally:
        server.stop()
    assert "KEY=VALUE" in server.log()


def test_grafana_dashboard_only_uses_metrics_the_server_exposes(test_repo: Path, tmp_path: Path) -> None:
    import json
    import re

    dashboard = json.loads((Path(__file__).parent.parent / "docs/grafana/kiln-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b((?:nv|process|kiln)_[a-z_]+)", e)}
    extra = ["--metrics-config", "summary_latencies=true", "--metrics-config", "histogram_latencies=true"]
    with KilnProcess([test_repo], "--strict-readiness", "false", *extra, log_dir=tmp_path) as server:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
            exposed = {
                line.split("{")[0].split(" ")[0] for line in r.read().decode().splitlines() if line[:1] != "#"
            }
    assert used and used <= exposed, used - exposed
