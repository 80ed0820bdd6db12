"""Row reading and checking: dtype casts, shapes, bad files, CSV cells, column mapping, shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln.batch.dataset import DatasetSpec, RowError, check_row, open_dataset, shard_ranges
from kiln.batch.tables import column_mapping
from kiln.errors import InvalidArgumentError
from kiln.model.version import TensorSpec
from kiln.types import datatypes


def _spec(name: str, dtype: str, dims: tuple[int, ...]) -> TensorSpec:
    return TensorSpec(name, datatypes.BY_NAME[dtype], dims, None)


INPUTS = {"a": _spec("a", "FP32", (4,))}


def test_check_row_casts_and_reshapes() -> None:
    row = check_row({"a": np.arange(4, dtype=np.float64)}, INPUTS)
    assert row["a"].dtype == np.float32
    grid = check_row({"g": np.arange(6.0)}, {"g": _spec("g", "FP32", (2, 3))})
    assert grid["g"].shape == (2, 3)
    ints = check_row({"i": np.array([1.0, 2.0])}, {"i": _spec("i", "INT64", (-1,))})
    assert ints["i"].dtype == np.int64


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.zeros(3, np.float32), r"shape \[3\] does not fit dims \[4\]"),
        (np.array(["x"] * 4), "takes float32"),
    ],
)
def test_check_row_refuses(value: np.ndarray, message: str) -> None:
    with pytest.raises(RowError, match=message):
        check_row({"a": value}, INPUTS)


def test_check_row_refuses_fractions_for_integers_and_missing_inputs() -> None:
    with pytest.raises(RowError, match="not whole numbers"):
        check_row({"i": np.array([1.5])}, {"i": _spec("i", "INT32", (1,))})
    with pytest.raises(RowError, match="no value for input 'a'"):
        check_row({}, INPUTS)


def test_npy_rows_and_an_unreadable_file(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((3, 4), np.float32))
    np.save(tmp_path / "b.npy", np.ones(4, np.float32))  # one row without a batch axis
    (tmp_path / "c.npy").write_bytes(b"garbage")
    dataset = open_dataset(DatasetSpec(tmp_path), INPUTS)
    assert len(dataset) == 5
    assert [dataset.row_id(i) for i in range(5)] == ["a.npy:0", "a.npy:1", "a.npy:2", "b.npy:0", "c.npy:0"]
    assert (dataset.read(3)["a"] == 1).all()
    with pytest.raises(RowError, match=r"cannot read c\.npy"):
        dataset.read(4)


def test_npz_without_an_input_fails_its_rows(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", other=np.zeros((2, 4)))
    dataset = open_dataset(DatasetSpec(tmp_path), INPUTS)
    with pytest.raises(RowError, match=r"no array for inputs \['a'\]"):
        dataset.read(0)


def test_csv_cells(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text('a,name\n"[1, 2, 3, 4]",x\n1 2 3 4,y\n,z\n')
    dataset = open_dataset(DatasetSpec(path, id_column="name"), INPUTS)
    assert [dataset.row_id(i) for i in range(3)] == ["x", "y", "z"]
    assert check_row(dataset.read(0), INPUTS)["a"].tolist() == [1, 2, 3, 4]
    with pytest.raises(RowError, match="empty"):
        dataset.read(2)


def test_column_mapping() -> None:
    two = {"a": INPUTS["a"], "b": _spec("b", "FP32", (1,))}
    assert column_mapping(["a", "b"], two, {}, None) == {"a": "a", "b": "b"}
    assert column_mapping(["id", "pixels"], INPUTS, {}, "id") == {"a": "pixels"}  # the only data column
    with pytest.raises(InvalidArgumentError, match="--columns INPUT=COLUMN"):
        column_mapping(["x", "y"], two, {}, None)
    with pytest.raises(InvalidArgumentError, match="names inputs"):
        column_mapping(["x"], INPUTS, {"nope": "x"}, None)


def test_mixed_folders_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((1, 4)))
    (tmp_path / "b.csv").write_text("a\n1\n")
    with pytest.raises(InvalidArgumentError, match="mixes"):
        open_dataset(DatasetSpec(tmp_path), INPUTS)


def test_shard_ranges() -> None:
    assert shard_ranges(10, 4) == [range(0, 4), range(4, 8), range(8, 10)]
    assert shard_ranges(0, 4) == []
