"""What tracing costs per request: the core's infer on a tiny model (add_sub, FP32 [1, 16]) in process, with no
trace extension, with tracing off (the one check), sampling 1 in 1000, tracing every request in triton mode
(records buffered, written at the end) and in OpenTelemetry mode (three spans per request, an in-memory
exporter behind the batch span processor: the SDK's cost without the network).

    .venv/bin/python bench/tracing.py [--calls 2000] [--rounds 5] [--out /tmp/bench_tracing.md]

Prints a table of the median (and the best) microseconds per call over the rounds (configurations interleaved, order
alternating) and each one's ratio to "no trace extension".
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kiln.core import Core
from kiln.examples import models, write_model
from kiln.repository import ModelRepository
from kiln.tracing import TraceConfig, TraceManager
from kiln.types import InferRequest, InputTensor, RequestedOutput
from kiln.types.datatypes import BY_NAME

Setup = Callable[[Core], None]


def _request() -> InferRequest:
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    inputs = [InputTensor(n, BY_NAME["FP32"], x.shape, x) for n in ("INPUT0", "INPUT1")]
    return InferRequest("add_sub", inputs=inputs, outputs=[RequestedOutput("OUTPUT0")])


def _triton(tmp: Path, rate: int) -> Setup:
    specs = ["level=TIMESTAMPS", f"rate={rate}", f"triton,file={tmp / f'trace-{rate}.json'}"]
    return lambda core: TraceManager(TraceConfig.parse(specs)).attach(core)


def _otel(core: Core) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from kiln.tracing.otel import OtelTracer

    config = TraceConfig.parse(["mode=opentelemetry", "level=TIMESTAMPS", "rate=1"])
    TraceManager(config, OtelTracer(config.otel, InMemorySpanExporter())).attach(core)


def _off(core: Core) -> None:
    TraceManager(TraceConfig.parse([])).attach(core)


async def _measure(
    repo: Path, setups: dict[str, Setup | None], calls: int, rounds: int
) -> dict[str, list[float]]:
    cores: dict[str, Core] = {}
    for name, setup in setups.items():
        core = Core(ModelRepository([repo]))
        await core.start()
        if setup is not None:
            setup(core)
        cores[name] = core
    results: dict[str, list[float]] = {name: [] for name in setups}
    try:
        for core in cores.values():  # warm-up (and past the inline-execution measurement)
            for _ in range(200):
                await core.infer(_request())
        for round_ in range(rounds):
            order = list(cores) if round_ % 2 == 0 else list(cores)[::-1]
            for name in order:
                core = cores[name]
                start = time.perf_counter_ns()
                for _ in range(calls):
                    await core.infer(_request())
                results[name].append((time.perf_counter_ns() - start) / calls / 1e3)
            print(
                f"round {round_ + 1}: " + ", ".join(f"{n} {results[n][-1]:.1f}" for n in order),
                file=sys.stderr,
            )
    finally:
        for core in cores.values():
            await core.close()
    return results


def hook_costs(tmp: Path, n: int = 20000) -> dict[str, float]:
    """The tracing calls alone (begin at admission, end at release) per traced request, in microseconds: what a
    traced request adds, free of the model and of the machine's noise around a whole infer."""
    from types import SimpleNamespace

    from kiln.scheduling import Batch

    model = SimpleNamespace(name="add_sub", version=1, config=SimpleNamespace(platform=""))
    managers = {
        "triton": TraceManager(
            TraceConfig.parse(["level=TIMESTAMPS", "rate=1", f"triton,file={tmp / 'h.json'}"])
        )
    }
    try:
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from kiln.tracing.otel import OtelTracer

        config = TraceConfig.parse(["mode=opentelemetry", "level=TIMESTAMPS", "rate=1"])
        managers["opentelemetry"] = TraceManager(config, OtelTracer(config.otel, InMemorySpanExporter()))
    except ImportError:
        pass
    costs: dict[str, float] = {}
    for name, manager in managers.items():
        request, timing = SimpleNamespace(id=""), Batch(1, 1000, 0, 5000, 0)
        start = time.perf_counter_ns()
        for _ in range(n):
            trace = manager.begin(request, model, SimpleNamespace(trace=None), time.perf_counter_ns())
            assert trace is not None
            trace.end(start, start + 10, timing)
        costs[name] = (time.perf_counter_ns() - start) / n / 1e3
        manager.close()
    return costs


def table(results: dict[str, list[float]], calls: int, rounds: int) -> str:
    first = next(iter(results.values()))
    base, base_min = statistics.median(first), min(first)
    lines = [
        f"Tracing overhead: Core.infer on add_sub FP32 [1, 16], in process, {calls} calls x {rounds} rounds",
        "",
        "| configuration | median us/call | ratio | best round us/call | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in results.items():
        median, best = statistics.median(values), min(values)
        lines.append(f"| {name} | {median:.1f} | {median / base:.3f} | {best:.1f} | {best / base_min:.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the table there (markdown)")
    args = parser.parse_args()
    logging.getLogger("kiln").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        write_model(tmp / "repo", "add_sub", models.add_sub(["batch", 16]), None)
        setups: dict[str, Setup | None] = {
            "no trace extension": None,
            "tracing off (level OFF)": _off,
            "triton, rate=1000": _triton(tmp, 1000),
            "triton, rate=1 (every request)": _triton(tmp, 1),
        }
        try:
            import opentelemetry.sdk  # noqa: F401

            setups["opentelemetry, rate=1 (in-memory exporter)"] = _otel
        except ImportError:
            print("opentelemetry-sdk not installed: OpenTelemetry mode not measured", file=sys.stderr)
        results = asyncio.run(_measure(tmp / "repo", setups, args.calls, args.rounds))
        costs = hook_costs(tmp)
    text = table(results, args.calls, args.rounds)
    text += "\n\nThe tracing calls alone (begin + end) per traced request:\n\n"
    text += "| mode | us per traced request |\n|---|---:|\n"
    text += "\n".join(f"| {mode} | {us:.1f} |" for mode, us in costs.items())
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
