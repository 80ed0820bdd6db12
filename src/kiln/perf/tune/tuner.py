"""``kiln tune``: find the serving config with the highest throughput whose p99 latency stays within a budget.

One real ``kiln serve`` (:mod:`kiln.perf.tune.server`) loads the user's config as given, then each candidate
the search (:mod:`kiln.perf.tune.search`) asks for; the load generator (:mod:`kiln.perf.loadgen`) measures
each at several concurrencies. The run is bounded by ``max_minutes``: when the time is up the best config found
so far wins.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from kiln.backends import backend_class, backend_name
from kiln.config.parse import load_config
from kiln.config.schema import model_config_pb2
from kiln.errors import FailedPreconditionError, InvalidArgumentError, KilnError
from kiln.perf.inputs import InputSpec, random_inputs
from kiln.perf.loadgen import LoadPoint, run_load
from kiln.perf.tune.search import Measured, Search, SearchSettings, choose
from kiln.perf.tune.server import TuneServer
from kiln.perf.tune.space import Candidate, SearchSpace, instance_kind, render
from kiln.types import datatypes


class NoConfigWithinBudget(FailedPreconditionError):
    """No measured config kept its p99 latency within the budget."""


@dataclass(frozen=True)
class TuneOptions:
    model_dir: Path  # a repository model folder (REPO/NAME with config.pbtxt and version folders)
    latency_budget_ms: float  # p99, client side
    max_minutes: float = 8.0
    space: SearchSpace | None = None  # None: SearchSpace.default() for this machine
    duration_s: float = 4.0  # measurement window per point
    warmup_s: float = 1.0  # load before each window, not counted
    max_concurrency: int = 64
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # for inputs with dynamic dims
    output_dir: Path | None = None  # default: ./kiln-tune-<model>
    write: bool = False  # replace MODEL_DIR/config.pbtxt with the winner
    confirm: int = 3  # the best configs measured again before one wins
    python: str = sys.executable  # the interpreter that runs kiln serve


@dataclass
class TuneResult:
    model: str
    budget_ms: float
    measured: list[Measured]  # the config as given first, then the search's candidates in order
    best: Measured | None
    original_text: str  # config.pbtxt as found ('' when there was none)
    tuned_text: str  # the winner rendered over the user's config ('' without a winner)
    elapsed_s: float
    out_of_time: bool
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def best_point(self) -> LoadPoint | None:
        return self.best.best(self.budget_ms) if self.best else None


Progress = Callable[[str, Measured | None, LoadPoint | None], None]


def _quiet(message: str, measured: Measured | None, point: LoadPoint | None) -> None:
    pass


def read_user_config(model_dir: Path) -> tuple[model_config_pb2.ModelConfig, str]:
    """The user's config.pbtxt as written (not auto-completed), and its text."""
    path = model_dir / "config.pbtxt"
    if not model_dir.is_dir():
        raise InvalidArgumentError(f"{model_dir} is not a model folder (REPO/NAME with version folders)")
    if not path.exists():
        return model_config_pb2.ModelConfig(name=model_dir.name), ""
    config = load_config(path)
    if config.name and config.name != model_dir.name:
        raise InvalidArgumentError(
            f"{path}: config name '{config.name}' is not the folder name '{model_dir.name}'"
        )
    return config, path.read_text()


def request_inputs(
    config: model_config_pb2.ModelConfig, shapes: dict[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
    """One batch-1 request's random inputs, from the served (completed) config."""
    specs = []
    for io in config.input:
        dtype = datatypes.BY_CONFIG_NAME[model_config_pb2.DataType.Name(io.data_type)].numpy
        dims = tuple(int(d) for d in io.dims)  # what a client sends (a reshape is the server's business)
        specs.append(InputSpec(io.name, dtype, ((-1,) if config.max_batch_size > 0 else ()) + dims))
    return random_inputs(specs, dict(shapes), 1, np.random.default_rng(0))


def tune(options: TuneOptions, progress: Progress = _quiet) -> TuneResult:
    """Search, then write the report files; raises :class:`NoConfigWithinBudget` when nothing met the budget
    (after writing the report of what was measured)."""
    if options.latency_budget_ms <= 0 or options.max_minutes <= 0:
        raise InvalidArgumentError("--latency-budget-ms and --max-minutes must be positive")
    model_dir = options.model_dir.resolve()
    base, original_text = read_user_config(model_dir)
    out = (options.output_dir or Path.cwd() / f"kiln-tune-{model_dir.name}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    deadline = started + 60.0 * options.max_minutes
    point_cost = options.warmup_s + options.duration_s + 0.5

    def time_left() -> bool:
        return time.monotonic() + point_cost <= deadline

    with TuneServer(model_dir, out / "server.log", options.python) as server:
        search, as_given, kind = _search(server, base, options, time_left, progress)
    result = _result(model_dir.name, options, search, as_given, base, kind, original_text, started)
    from kiln.perf.tune.report import write_outputs

    result.files = write_outputs(result, out, model_dir if options.write else None)
    if result.best is None:
        lowest = min((m.lowest_p99() for m in result.measured), default=math.inf)
        hint = f"the lowest p99 measured was {lowest:.2f} ms" if math.isfinite(lowest) else "nothing answered"
        raise NoConfigWithinBudget(
            f"no configuration kept p99 within {options.latency_budget_ms:g} ms ({hint}, over "
            f"{sum(len(m.points) for m in result.measured)} points); raise --latency-budget-ms. Points: "
            f"{result.files.get('markdown', out)}"
        )
    return result


def _search(
    server: TuneServer, base: model_config_pb2.ModelConfig, options: TuneOptions, time_left: Callable[[], bool],
    progress: Progress,
) -> tuple[Search, Measured, int]:  # fmt: skip
    kind = instance_kind(base, backend_class(backend_name(base, server.model_dir)).gpu_available())
    as_given = Measured(None)
    progress(f"loading '{server.name}' as configured", None, None)
    loaded: list[object] = [None]  # the candidate the server runs now (None: the config as given)
    try:
        server.load()
    except KilnError as e:  # e.g. KIND_GPU on a host without one: measure the candidates anyway
        as_given.error = f"load failed: {e.message}"
        loaded[0] = Candidate(1, None, 0)
        server.load(render(base, Candidate(1, None, 0), kind))
    served = server.config()
    inputs = request_inputs(served, options.shapes)
    cores = os.cpu_count() or 1
    space = _space(options.space or SearchSpace.default(cores), base)
    settings = SearchSettings(options.latency_budget_ms, options.max_concurrency, cores=cores)

    def measure(candidate: Candidate | None, concurrency: int) -> LoadPoint:
        label = candidate.label() if candidate else "as given"
        progress(f"{label} @ concurrency {concurrency}", None, None)
        if candidate != loaded[0]:
            progress(f"loading {label}", None, None)
            try:
                server.load(render(base, candidate, kind) if candidate else None)
            except KilnError as e:
                return LoadPoint(concurrency, 0, 1, 0.0, 0.0, *(4 * [math.nan]), f"load failed: {e.message}")
            loaded[0] = candidate
        point = run_load(
            server.grpc_url, server.name, inputs, concurrency, options.duration_s, options.warmup_s
        )
        progress("", search.measured.get(candidate.key(cores)) if candidate else as_given, point)
        return point

    search = Search(space, settings, measure, time_left, batching=served.max_batch_size > 0)
    if not as_given.error:
        search.sweep(as_given, 1)  # the user's config as given: the reference, and the sweep's first start
    best = as_given.best(options.latency_budget_ms)
    search.run(space.start(served.max_batch_size), max(1, (best.concurrency if best else 1) // 2))
    search.confirm([as_given, *search.measured.values()], top=options.confirm)
    return search, as_given, kind


def _space(space: SearchSpace, base: model_config_pb2.ModelConfig) -> SearchSpace:
    """A config whose dynamic_batching sets more than the tuned fields (priorities, queue policy, ...) keeps
    its batcher: "no batcher" is not tried for it."""
    batching = model_config_pb2.ModelDynamicBatching()
    batching.CopyFrom(base.dynamic_batching)
    batching.ClearField("preferred_batch_size")
    batching.ClearField("max_queue_delay_microseconds")
    if not base.HasField("dynamic_batching") or not batching.ListFields():
        return space
    delays = tuple(d for d in space.delays_us if d is not None) or (0,)
    return replace(space, delays_us=delays)


def _result(
    model: str, options: TuneOptions, search: Search, as_given: Measured, base: model_config_pb2.ModelConfig,
    kind: int, original_text: str, started: float,
) -> TuneResult:  # fmt: skip
    budget = options.latency_budget_ms
    measured = [as_given, *search.measured.values()]
    best = choose(measured, budget)
    tuned = ""
    if best is not None:
        if best.candidate is None:
            tuned = original_text or text_format.MessageToString(base)
        else:
            tuned = text_format.MessageToString(render(base, best.candidate, kind))
    return TuneResult(
        model=model,
        budget_ms=budget,
        measured=measured,
        best=best,
        original_text=original_text,
        tuned_text=tuned,
        elapsed_s=time.monotonic() - started,
        out_of_time=search.out_of_time,
    )
