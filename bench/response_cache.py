"""The response cache on a repeated-input load: EfficientNet-Lite0 with and without `response_cache`, one server
started with `--cache-config`, perf_analyzer (which sends the same generated input every request) at
concurrency 1 and 4, alternating rounds.

    bash bench/setup.sh
    .venv/bin/python bench/response_cache.py --markdown-out bench/results/response_cache.md

Both models are the same ONNX file; `efficientnet_cached` only adds `response_cache { enable: true }`. A repeated
input is the cache's best case (every request after the first is a hit); the table shows what a hit costs
against running the model.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from _common import (
    add_output_options,
    get_json,
    kiln_server,
    load_note,
    machine_description,
    perf_analyzer,
    publish,
    results_dir,
    run_perf_analyzer,
)
from kiln.vision import zoo

MODELS = ("efficientnet_lite0", "efficientnet_cached")


def build(root: Path) -> Path:
    zoo.write_classifier(root)
    shutil.copytree(root / zoo.CLASSIFIER, root / MODELS[1])
    config = (
        (root / MODELS[1] / "config.pbtxt")
        .read_text()
        .replace(f'name: "{zoo.CLASSIFIER}"', f'name: "{MODELS[1]}"')
    )
    (root / MODELS[1] / "config.pbtxt").write_text(config + "response_cache { enable: true }\n")
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval", type=int, default=3000, help="perf_analyzer window (ms)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    add_output_options(parser, "response_cache")
    args = parser.parse_args()
    out = results_dir(args.out_dir, "response_cache")
    pa = perf_analyzer()
    start_load = load_note()
    rows: dict[tuple[str, int], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        repo = build(Path(tmp))
        with kiln_server(
            repo, out / "kiln.log", extra_args=["--cache-config", "local,size=67108864"]
        ) as server:
            for r in range(args.rounds):
                for c in args.concurrency:
                    order = MODELS if (r + c) % 2 == 0 else MODELS[::-1]
                    for model in order:
                        row, _ = run_perf_analyzer(
                            pa,
                            ["-m", model, "-u", server.http_url, "-i", "http", "--concurrency-range", str(c),
                             "--measurement-interval", str(args.interval), "--stability-percentage", "10000",
                             "--max-trials", "3"],
                            out / f"{model}_c{c}_r{r}",
                            timeout_s=120,
                        )  # fmt: skip
                        if row is not None:
                            rows.setdefault((model, c), []).append(row)
            stats = get_json(f"http://{server.http_url}/v2/models/{MODELS[1]}/stats")
    assert isinstance(stats, dict)
    cached = stats["model_stats"][0]["inference_stats"]
    lines = [
        "# Response cache: a repeated-input load",
        "",
        "- command: `.venv/bin/python bench/response_cache.py --markdown-out bench/results/response_cache.md`",
        f"- machine: {machine_description()}",
        f"- load: at start {start_load}; at end {load_note()}",
        "",
        f"perf_analyzer over HTTP, -b 1, its generated input repeated every request, {args.rounds} rounds "
        f"(model order alternating), windows of {args.interval} ms; medians over the rounds.",
        "",
        "| concurrency | model | infer/s | p50 (us) | p99 (us) | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for c in args.concurrency:
        base = None
        for model in MODELS:
            got = rows.get((model, c), [])
            if not got:
                lines.append(f"| {c} | {model} | failed | | | |")
                continue
            tput = statistics.median(g["Inferences/Second"] for g in got)
            p50 = statistics.median(g["p50 latency"] for g in got)
            p99 = statistics.median(g["p99 latency"] for g in got)
            base = tput if base is None else base
            lines.append(f"| {c} | {model} | {tput:,.1f} | {p50:,.0f} | {p99:,.0f} | {tput / base:.1f}x |")
    lines += [
        "",
        f"The cached model's statistics over the whole run: {cached['cache_hit']['count']:,} hits "
        f"({cached['cache_hit']['ns'] / max(1, cached['cache_hit']['count']) / 1000:.1f} us each to look up), "
        f"{cached['cache_miss']['count']:,} misses.",
        "",
    ]
    publish("\n".join(lines), args.markdown_out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
