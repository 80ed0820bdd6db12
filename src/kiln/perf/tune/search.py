"""The search of ``kiln tune``: coordinate ascent over the config, a concurrency sweep per config.

Every candidate config is scored by the highest throughput among its measured points whose p99 latency stays
within the budget. Its points come from a sweep of client concurrency: doubling from a start (half the best
concurrency found so far: low concurrencies rarely win once one config has gone higher) until p99 leaves the
budget or throughput stops growing, then one step between the last concurrency within the budget and the first
beyond it. A start that is already over budget halves until it is within.

Coordinate ascent then walks one dimension at a time (batch limit, queue delay, preferred sizes, instances,
threads): it steps to the neighbouring value up, keeps walking while each step beats the incumbent by more than
the noise margin, and tries the other way only when the first step did not pay (a dominated direction is never
walked further). Passes repeat until one changes nothing, or the time is up. Then the three best configs are
measured once more at their best concurrency; a config wins on the lower of its two measurements, and one whose
second measurement left the budget does not win (on a noisy machine one lucky window would otherwise decide).

The logic only sees a ``measure(candidate, concurrency)`` function, so tests drive it with synthetic numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from kiln.perf.loadgen import LoadPoint
from kiln.perf.tune.space import Candidate, SearchSpace

Measure = Callable[[Candidate | None, int], LoadPoint]  # None: the user's config as given


@dataclass
class Measured:
    """One candidate config (None: the user's config as given) and the points measured for it."""

    candidate: Candidate | None
    points: list[LoadPoint] = field(default_factory=list)
    error: str = ""  # the config failed to load, or its requests failed
    confirmation: LoadPoint | None = None  # the best point's concurrency measured again after the search

    @property
    def label(self) -> str:
        return self.candidate.label() if self.candidate else "as given"

    def best(self, budget_ms: float) -> LoadPoint | None:
        """The highest-throughput point within the budget (without errors)."""
        ok = [p for p in self.points if within(p, budget_ms)]
        return max(ok, key=lambda p: p.throughput) if ok else None

    def score(self, budget_ms: float) -> float:
        best = self.best(budget_ms)
        return best.throughput if best else 0.0

    def final_score(self, budget_ms: float) -> float:
        """The score, confirmed: the lower of the two measurements at the best concurrency, 0 when the second
        one left the budget (a lucky window does not win)."""
        if self.confirmation is None:
            return self.score(budget_ms)
        if not within(self.confirmation, budget_ms):
            return 0.0
        return min(self.score(budget_ms), self.confirmation.throughput)

    def lowest_p99(self) -> float:
        values = [p.p99_ms for p in self.points if p.requests and not p.errors]
        return min(values) if values else math.inf


def within(point: LoadPoint, budget_ms: float) -> bool:
    return point.requests > 0 and point.errors == 0 and point.p99_ms <= budget_ms


@dataclass(frozen=True)
class SearchSettings:
    budget_ms: float
    max_concurrency: int = 64
    growth: float = 0.05  # a doubling of concurrency must add this share of throughput to continue the sweep
    margin: float = 0.03  # a step must beat the incumbent by this share to count (measurement noise)
    cores: int | None = None  # for telling which candidates are the same served config


class Search:
    """Coordinate ascent over ``space`` from ``start``; ``time_left()`` says whether another point fits."""

    def __init__(
        self,
        space: SearchSpace,
        settings: SearchSettings,
        measure: Measure,
        time_left: Callable[[], bool],
        batching: bool = True,
    ) -> None:
        self.space = space
        self.settings = settings
        self.measure = measure
        self.time_left = time_left
        self.dimensions = space.dimensions(batching)
        self.measured: dict[tuple[object, ...], Measured] = {}
        self.out_of_time = False

    def run(self, start: Candidate, start_concurrency: int = 1) -> Measured:
        """The incumbent after the ascent (the best measured candidate)."""
        incumbent = self.evaluate(start, start_concurrency)
        changed = True
        while changed and not self.out_of_time:
            changed = False
            for dimension in self.dimensions:
                better = self._walk(incumbent, dimension)
                if better is not incumbent:
                    incumbent, changed = better, True
        return incumbent

    def _walk(self, incumbent: Measured, dimension: str) -> Measured:
        cores = self.settings.cores
        for direction in (+1, -1):
            assert incumbent.candidate is not None
            position, moved = incumbent.candidate, False
            while not self.out_of_time:
                neighbour = self.space.step(position, dimension, direction)
                if neighbour is None:
                    break
                position = neighbour
                assert incumbent.candidate is not None
                if neighbour.key(cores) == incumbent.candidate.key(cores):
                    continue  # the same served config (e.g. threads "auto" = 2): walk through it
                trial = self.evaluate(neighbour, self._start_concurrency(incumbent))
                if not self._beats(trial, incumbent):
                    break
                incumbent, moved = trial, True
            if moved:
                break  # this direction paid: the other one is dominated
        return incumbent

    def _beats(self, trial: Measured, incumbent: Measured) -> bool:
        budget = self.settings.budget_ms
        a, b = trial.score(budget), incumbent.score(budget)
        if a > 0 or b > 0:
            return a > b * (1 + self.settings.margin)
        # nothing within the budget yet: move towards lower latency
        return trial.lowest_p99() < incumbent.lowest_p99() * (1 - self.settings.margin)

    def _start_concurrency(self, incumbent: Measured) -> int:
        best = incumbent.best(self.settings.budget_ms)
        return max(1, (best.concurrency if best else 1) // 2)

    def evaluate(self, candidate: Candidate, start: int = 1) -> Measured:
        """Sweep ``candidate``'s concurrency (once: a config measured before is not measured again)."""
        key = candidate.key(self.settings.cores)
        if key in self.measured:
            return self.measured[key]
        measured = Measured(candidate)
        self.measured[key] = measured
        self.sweep(measured, start)
        return measured

    def sweep(self, measured: Measured, start: int) -> None:
        budget, limit = self.settings.budget_ms, self.settings.max_concurrency
        concurrency = min(max(1, start), limit)
        first = self._point(measured, concurrency)
        while first is not None and not within(first, budget) and concurrency > 1 and not measured.error:
            concurrency //= 2  # over budget already: come down until within
            first = self._point(measured, concurrency)
        if first is None or not within(first, budget):
            return
        best, over = first, None
        while concurrency < limit:
            concurrency = min(2 * concurrency, limit)
            point = self._point(measured, concurrency)
            if point is None:
                return
            if not within(point, budget):
                over = concurrency
                break
            grew = point.throughput > best.throughput * (1 + self.settings.growth)
            best = point if point.throughput > best.throughput else best
            if not grew:
                return
        if over is not None and over - over // 2 >= 2:
            self._point(measured, over // 2 + over // 4)  # between the last within and the first over

    def _point(self, measured: Measured, concurrency: int) -> LoadPoint | None:
        if not self.time_left():
            self.out_of_time = True
            return None
        point = self.measure(measured.candidate, concurrency)
        measured.points.append(point)
        if point.errors and not measured.error:
            measured.error = point.first_error or f"{point.errors} failed requests"
        return point

    def confirm(self, candidates: list[Measured], top: int = 3) -> None:
        """Measure the ``top`` best configs of ``candidates`` once more at their best concurrency."""
        budget = self.settings.budget_ms
        ranked = sorted((m for m in candidates if m.best(budget)), key=lambda m: -m.score(budget))
        for measured in ranked[:top]:
            best = measured.best(budget)
            if best is None or not self.time_left():
                return
            measured.confirmation = self.measure(measured.candidate, best.concurrency)

    def ranked(self) -> list[Measured]:
        """Every measured candidate, best first."""
        budget = self.settings.budget_ms
        return sorted(self.measured.values(), key=lambda m: (-m.score(budget), m.lowest_p99()))


def choose(candidates: list[Measured], budget_ms: float) -> Measured | None:
    """The winner: the best confirmed score; when every confirmed config left the budget on its second
    measurement, the best of the others."""
    confirmed = [m for m in candidates if m.confirmation is not None and m.final_score(budget_ms) > 0]
    pool = confirmed or [m for m in candidates if m.confirmation is None and m.best(budget_ms)]
    return max(pool, key=lambda m: m.final_score(budget_ms)) if pool else None
