"""The search of kiln tune on synthetic measurements: budgets, sweeps, pruned directions, the time bound."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest

from kiln.perf.loadgen import LoadPoint, point
from kiln.perf.tune.search import Measured, Search, SearchSettings, choose, within
from kiln.perf.tune.space import Candidate, SearchSpace

SPACE = SearchSpace(
    instances=(1, 2),
    threads=(None, 1),
    max_batch_sizes=(4, 8, 16, 32),
    preferred=("none", "max", "max/2"),
    delays_us=(None, 0, 500, 2000),
)


def capacity(c: Candidate) -> float:
    """Requests/s a synthetic server sustains: batching pays up to 16, a delay of 500 us is best, one
    instance with the default threads is best."""
    value = 100.0
    if c.delay_us is not None:
        value *= {4: 1.2, 8: 1.4, 16: 1.6, 32: 1.3}[c.max_batch_size]
        value *= {0: 1.0, 500: 1.1, 2000: 1.05}[c.delay_us]
        value *= {"none": 1.0, "max": 0.95, "max/2": 1.08}[c.preferred]
    value *= 1.0 if c.instances == 1 else 0.9
    value *= 1.0 if c.threads is None else 0.7
    return value


class Synthetic:
    """Closed-loop behaviour: throughput grows with concurrency up to the capacity, latency = c / throughput."""

    def __init__(self, single: float = 40.0) -> None:
        self.single = single
        self.calls: list[tuple[Candidate | None, int]] = []

    def __call__(self, candidate: Candidate | None, concurrency: int) -> LoadPoint:
        self.calls.append((candidate, concurrency))
        cap = capacity(candidate) if candidate else 90.0
        throughput = min(concurrency * self.single, cap)
        latency_ms = 1000.0 * concurrency / throughput
        measured = point(concurrency, [int(latency_ms * 1.2e6)] * 99 + [int(latency_ms * 1.5e6)], 0, 1.0)
        return dataclasses.replace(measured, throughput=throughput)


def run(budget_ms: float, measure: Synthetic, points: int | None = None) -> tuple[Search, Measured]:
    count = itertools.count()
    search = Search(
        SPACE,
        SearchSettings(budget_ms, max_concurrency=64, cores=2),
        measure,
        time_left=lambda: points is None or next(count) < points,
    )
    return search, search.run(SPACE.start(32))


def grid() -> list[Candidate]:
    return [
        Candidate(i, t, b, p, d)
        for i, t, b, p, d in itertools.product(
            SPACE.instances, SPACE.threads, SPACE.max_batch_sizes, SPACE.preferred, SPACE.delays_us
        )
    ]


def test_finds_the_best_config_within_budget_without_the_full_grid() -> None:
    measure = Synthetic()
    search, best = run(budget_ms=200.0, measure=measure)
    assert best.candidate == Candidate(1, None, 16, "max/2", 500)
    chosen = best.best(200.0)
    assert chosen is not None and within(chosen, 200.0)
    assert chosen.throughput == pytest.approx(capacity(best.candidate))
    # the chosen config is the best of everything measured
    assert all(m.score(200.0) <= best.score(200.0) for m in search.measured.values())
    assert search.ranked()[0] is best
    unique = {c.key(2) for c in grid()}
    assert len(search.measured) < len(unique) / 2  # not a blind grid


def test_a_point_over_budget_is_never_the_score() -> None:
    measure = Synthetic()
    search, best = run(budget_ms=60.0, measure=measure)
    for measured in search.measured.values():
        chosen = measured.best(60.0)
        if chosen is not None:
            assert chosen.p99_ms <= 60.0
        # every sweep stops at the first concurrency over the budget (plus at most one step between)
        over = [p for p in measured.points if p.p99_ms > 60.0]
        assert len(over) <= 2
    assert best.best(60.0) is not None


def test_sweep_stops_when_throughput_stops_growing() -> None:
    measure = Synthetic(single=1000.0)  # saturated from concurrency 1: doubling does not pay
    search = Search(SPACE, SearchSettings(1e9, cores=2), measure, time_left=lambda: True)
    measured = search.evaluate(Candidate(1, None, 8, "none", 0))
    assert [p.concurrency for p in measured.points] == [1, 2]


def test_sweep_comes_down_from_an_over_budget_start() -> None:
    measure = Synthetic()
    search = Search(SPACE, SearchSettings(40.0, cores=2), measure, time_left=lambda: True)
    measured = search.evaluate(Candidate(1, None, 8, "none", 0), start=16)
    concurrencies = [p.concurrency for p in measured.points]
    assert concurrencies[:3] == [16, 8, 4]
    assert measured.best(40.0) is not None and measured.best(40.0).p99_ms <= 40.0  # type: ignore[union-attr]


def test_a_dominated_direction_is_not_walked_further() -> None:
    measure = Synthetic()
    search, _best = run(budget_ms=200.0, measure=measure)
    threads = {c.threads for c, _ in measure.calls if c is not None}
    instances = {c.instances for c, _ in measure.calls if c is not None}
    assert threads == {None, 1} and instances == {1, 2}  # each tried once, then abandoned
    tried_one_thread = [m for m in search.measured.values() if m.candidate and m.candidate.threads == 1]
    assert len(tried_one_thread) == 1


def test_the_time_bound_keeps_the_best_so_far() -> None:
    measure = Synthetic()
    search, best = run(budget_ms=200.0, measure=measure, points=8)
    assert search.out_of_time
    assert len(measure.calls) == 8
    assert best is search.ranked()[0] or best.score(200.0) >= search.ranked()[0].score(200.0)


def test_an_impossible_budget_has_no_best_point() -> None:
    measure = Synthetic()
    search, best = run(budget_ms=0.001, measure=measure)
    assert all(m.best(0.001) is None for m in search.measured.values())
    assert best.score(0.001) == 0.0
    assert math.isfinite(best.lowest_p99())


def test_errors_and_empty_points_are_not_within_budget() -> None:
    failed = LoadPoint(4, 0, 3, 1.0, 0.0, math.nan, math.nan, math.nan, math.nan, "UNAVAILABLE: x")
    assert not within(failed, 1e9)
    good = point(4, [1_000_000] * 10, 0, 1.0)
    assert within(good, 1.0) and not within(good, 0.5)
    noisy = point(4, [1_000_000] * 10, 1, 1.0)
    assert not within(noisy, 1e9)


def test_a_lucky_window_does_not_win_the_confirmation() -> None:
    steady, lucky = Candidate(1, None, 8, "none", 0), Candidate(1, None, 16, "none", 0)
    seen: dict[Candidate | None, int] = {}

    def measure(candidate: Candidate | None, concurrency: int) -> LoadPoint:
        seen[candidate] = seen.get(candidate, 0) + 1
        throughput = 100.0 if candidate == steady else (150.0 if seen[candidate] == 1 else 80.0)
        return dataclasses.replace(point(concurrency, [10_000_000] * 100, 0, 1.0), throughput=throughput)

    search = Search(SPACE, SearchSettings(50.0, max_concurrency=1, cores=2), measure, time_left=lambda: True)
    measured = [search.evaluate(steady), search.evaluate(lucky)]
    assert choose(measured, 50.0) is measured[1]  # unconfirmed: the lucky window leads
    search.confirm(measured, top=2)
    assert [m.confirmation is not None for m in measured] == [True, True]
    assert measured[1].final_score(50.0) == 80.0 and measured[0].final_score(50.0) == 100.0
    assert choose(measured, 50.0) is measured[0]


def test_a_confirmation_over_budget_demotes_the_config() -> None:
    calls: list[int] = []

    def measure(candidate: Candidate | None, concurrency: int) -> LoadPoint:
        calls.append(concurrency)
        latency_ns = 10_000_000 if len(calls) == 1 else 90_000_000  # the second window is slow
        return point(concurrency, [latency_ns] * 100, 0, 1.0)

    search = Search(SPACE, SearchSettings(50.0, max_concurrency=1, cores=2), measure, time_left=lambda: True)
    only = search.evaluate(Candidate(1, None, 8, "none", 0))
    search.confirm([only])
    assert only.final_score(50.0) == 0.0 and choose([only], 50.0) is None
