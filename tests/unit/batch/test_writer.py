"""The shard store: atomic parts, finished shards, refusing another job's folder, reading back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln.batch.engine import Failure
from kiln.batch.options import OutputFormat
from kiln.batch.writer import ShardStore, read_output
from kiln.errors import FailedPreconditionError

JOB = {"model": "m", "rows": 4, "shard_size": 2, "format": "npy"}


def test_write_finish_and_read_back(tmp_path: Path) -> None:
    store = ShardStore(tmp_path, OutputFormat.NPY)
    store.prepare(JOB, overwrite=False)
    rows = [{"y": np.array([1.0, 2.0])}, {"y": np.array([3.0, 4.0])}]
    store.write(1, ["c", "d"], rows, [], ["y"], {})
    store.write(0, ["a"], rows[:1], [Failure(1, "b", "bad")], ["y"], {})
    assert store.finished() == {0, 1}
    assert store.collect_failures() == 1
    assert (tmp_path / "failures.jsonl").read_text() == '{"row_id": "b", "reason": "bad"}\n'
    out = read_output(tmp_path)
    assert out["row_id"].tolist() == ["a", "c", "d"]
    assert out["y"].tolist() == [[1, 2], [1, 2], [3, 4]]
    assert not list(tmp_path.glob(".*tmp*"))


def test_another_job_is_refused_unless_overwrite(tmp_path: Path) -> None:
    store = ShardStore(tmp_path, OutputFormat.NPY)
    store.prepare(JOB, overwrite=False)
    store.write(0, ["a"], [{"y": np.zeros(1)}], [], ["y"], {})
    with pytest.raises(FailedPreconditionError, match="differs in rows"):
        store.prepare({**JOB, "rows": 5}, overwrite=False)
    store.prepare({**JOB, "rows": 5}, overwrite=True)
    assert store.finished() == set()


def test_rows_of_different_shapes_are_refused_with_the_reason(tmp_path: Path) -> None:
    store = ShardStore(tmp_path, OutputFormat.NPY)
    store.prepare(JOB, overwrite=False)
    from kiln.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="rows of different shapes"):
        store.write(0, ["a", "b"], [{"y": np.zeros(1)}, {"y": np.zeros(2)}], [], ["y"], {})
    assert store.finished() == set()
