"""``kiln tune``: search serving configs on a real ``kiln serve`` for the best throughput within a p99 budget."""

from kiln.perf.tune.search import Measured, Search, SearchSettings
from kiln.perf.tune.space import Candidate, SearchSpace, render
from kiln.perf.tune.tuner import NoConfigWithinBudget, TuneOptions, TuneResult, tune

__all__ = [
    "Candidate",
    "Measured",
    "NoConfigWithinBudget",
    "Search",
    "SearchSettings",
    "SearchSpace",
    "TuneOptions",
    "TuneResult",
    "render",
    "tune",
]
