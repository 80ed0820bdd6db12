"""The engine: a row that fails the model fails only itself; failed reads never reach the model."""

from __future__ import annotations

from typing import Any

import numpy as np

from kiln.batch.engine import BatchEngine, Failure
from kiln.model.version import TensorSpec
from kiln.types import datatypes


class _Runner:
    """Fails any batch holding a negative value."""

    inputs = {"a": TensorSpec("a", datatypes.BY_NAME["FP32"], (2,), None)}

    def __init__(self) -> None:
        self.calls: list[int] = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append(len(feeds["a"]))
        if (feeds["a"] < 0).any():
            raise ValueError("negative input")
        return {"y": feeds["a"] * 2}


class _Rows:
    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows

    def row_id(self, index: int) -> str:
        return f"r{index}"

    def read(self, index: int) -> dict[str, np.ndarray]:
        return {"a": np.asarray(self.rows[index], np.float32)}


def test_a_bad_row_fails_alone() -> None:
    runner = _Runner()
    engine = BatchEngine(runner, _Rows([[1, 2], [-1, 0], [3, 4], [5]]))  # type: ignore[arg-type]
    result = engine.process(range(4))
    assert [i for i, _ in result.rows] == [0, 2]
    assert [out["y"].tolist() for _, out in result.rows] == [[2, 4], [6, 8]]
    failures = {f.row_id: f.reason for f in result.failures}
    assert failures["r1"] == "inference failed: negative input"
    assert "does not fit dims [2]" in failures["r3"]
    assert runner.calls == [3, 1, 1, 1]  # the merged batch, then each row alone
    assert all(isinstance(f, Failure) for f in result.failures)
