"""Metrics on a real server: latency summaries/histograms behind --metrics-config, the dashboard."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

from servers import KilnProcess


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
    assert any(x.startswith("nv_inference_queue_summary_us_count{") and x.endswith(" 5") for x in lines)
    assert any(x.startswith("kiln_inference_request_duration_histogram_us_bucket{") and 'le="+Inf"' in x
               and x.endswith(" 5") for x in lines)  # fmt: skip


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

    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "docs/grafana/kiln-dashboard.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b((?:nv|process|kiln)_[a-z_]+)", e)}
    extra = ["--metrics-config", "summary_latencies=true", "--metrics-config", "histogram_latencies=true"]
    with KilnProcess([test_repo], "--strict-readiness", "false", *extra, log_dir=tmp_path) as server:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
            exposed = {
                line.split("{")[0].split(" ")[0] for line in r.read().decode().splitlines() if line[:1] != "#"
            }
    assert used and used <= exposed, used - exposed
