"""The work both executors do on a batch of rows: read and check each row, stack, run the model, split.

A bad row never fails its batch: a row that cannot be read or does not fit the inputs becomes a
:class:`Failure` before inference, and when a merged batch fails the model, each of its rows is run alone (as
the server retries a failed merged batch) so only the rows that fail alone are recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from kiln.batch.dataset import Dataset, Row, RowError, check_row
from kiln.batch.model import ModelRunner

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class Failure:
    index: int
    row_id: str
    reason: str


@dataclass
class BatchResult:
    rows: list[tuple[int, Outputs]] = field(
        default_factory=list
    )  # (row index, outputs of that row), in order
    failures: list[Failure] = field(default_factory=list)

    def extend(self, other: BatchResult) -> None:
        self.rows += other.rows
        self.failures += other.failures


class BatchEngine:
    def __init__(self, runner: ModelRunner, dataset: Dataset) -> None:
        self.runner = runner
        self.dataset = dataset

    def decode(self, index: int) -> Row | Failure:
        """One row, read and fitted to the inputs (safe to call from many threads)."""
        try:
            return check_row(self.dataset.read(index), self.runner.inputs)
        except RowError as e:
            return Failure(index, self.dataset.row_id(index), e.reason)
        except Exception as e:  # a reader's unexpected error is still one row's failure
            log.debug("row %d failed to read", index, exc_info=True)
            return Failure(index, self.dataset.row_id(index), f"cannot read the row: {e}")

    def infer(self, indices: Sequence[int], decoded: Sequence[Row | Failure]) -> BatchResult:
        """Run the decoded rows (rows of equal shapes merged into one batch each)."""
        result = BatchResult(failures=[d for d in decoded if isinstance(d, Failure)])
        groups: dict[tuple[tuple[int, ...], ...], list[tuple[int, Row]]] = {}
        for index, row in zip(indices, decoded, strict=True):
            if not isinstance(row, Failure):
                groups.setdefault(tuple(a.shape for a in row.values()), []).append((index, row))
        for group in groups.values():
            result.extend(self._run(group))
        if len(groups) > 1:
            result.rows.sort(key=lambda item: item[0])
        return result

    def process(self, indices: Sequence[int]) -> BatchResult:
        """Decode and run ``indices`` in this thread (tests and small jobs)."""
        return self.infer(indices, [self.decode(i) for i in indices])

    def _run(self, group: list[tuple[int, Row]]) -> BatchResult:
        feeds = {name: np.stack([row[name] for _, row in group]) for name in group[0][1]}
        try:
            outputs = self.runner.run(feeds)
        except Exception as e:
            if len(group) == 1:
                index = group[0][0]
                return BatchResult(failures=[Failure(index, self.dataset.row_id(index), _message(e))])
            result = BatchResult()
            for item in group:  # one bad row fails only itself
                result.extend(self._run([item]))
            return result
        return BatchResult(
            rows=[(index, {k: v[i] for k, v in outputs.items()}) for i, (index, _) in enumerate(group)]
        )


def _message(error: Exception) -> str:
    return f"inference failed: {getattr(error, 'message', None) or error}"
