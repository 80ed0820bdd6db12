"""Parquet and CSV datasets: each row's input values come from columns (``--columns INPUT=COLUMN``).

Parquet cells may be scalars, lists (nested lists for several dims) or Ray Data's tensor columns; a CSV cell is
a number, a string (BYTES inputs) or numbers separated by spaces or commas, optionally in brackets (``[1, 2,
3]``). A flat list the size of the input's dims is reshaped to them.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kiln.batch.dataset import Dataset, DatasetSpec, Row, RowError
from kiln.errors import InvalidArgumentError, MissingDependencyError, UnavailableError
from kiln.model.version import TensorSpec


def pyarrow() -> Any:
    """pyarrow, or the error naming the extra to install."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ModuleNotFoundError:
        raise MissingDependencyError("pyarrow (Parquet files)", "batch") from None
    except ImportError as e:  # installed but unusable (e.g. built for another numpy)
        raise UnavailableError(
            f"pyarrow (Parquet files) cannot be imported: {e}; see pip install 'kiln[batch]'"
        ) from None
    return pyarrow


def open_table(spec: DatasetSpec, inputs: Mapping[str, TensorSpec], paths: Sequence[Path]) -> Dataset:
    suffixes = {p.suffix.lower() for p in paths}
    if len(suffixes) > 1:
        raise InvalidArgumentError(f"{spec.path} mixes Parquet and CSV files; give one kind")
    if suffixes == {".parquet"}:
        return ParquetDataset(spec, inputs, paths)
    return CsvDataset(spec, inputs, paths)


def column_mapping(
    columns: Sequence[str], inputs: Mapping[str, TensorSpec], given: Mapping[str, str], id_column: str | None
) -> dict[str, str]:
    """Input name -> column: ``given``, else the column named after each input; a one-input model takes the only
    column there is (besides the id column)."""
    unknown_inputs = sorted(set(given) - set(inputs))
    if unknown_inputs:
        raise InvalidArgumentError(
            f"--columns names inputs {unknown_inputs}; the model's are {sorted(inputs)}"
        )
    mapping = {name: given.get(name, name) for name in inputs}
    data_columns = [c for c in columns if c != id_column]
    if (
        len(inputs) == 1
        and not given
        and mapping[next(iter(inputs))] not in columns
        and len(data_columns) == 1
    ):
        mapping = {next(iter(inputs)): data_columns[0]}
    missing = {n: c for n, c in mapping.items() if c not in columns and not inputs[n].optional}
    if missing:
        raise InvalidArgumentError(
            f"no column for inputs {sorted(missing)} (looked for {sorted(missing.values())}); the table has "
            f"{list(columns)}: map them with --columns INPUT=COLUMN,..."
        )
    if id_column is not None and id_column not in columns:
        raise InvalidArgumentError(
            f"--id-column '{id_column}' is not a column; the table has {list(columns)}"
        )
    return {n: c for n, c in mapping.items() if c in columns}


class _TableDataset(Dataset):
    kind = "table"

    def _setup(self, paths: Sequence[Path], columns: Sequence[str], values: dict[str, Sequence[Any]]) -> None:
        self.paths = list(paths)
        self.mapping = column_mapping(columns, self.inputs, self.spec.columns, self.spec.id_column)
        self.values = values
        self.total = len(next(iter(values.values()))) if values else 0
        ids = values.get(self.spec.id_column) if self.spec.id_column else None
        self.ids = None if ids is None else [str(v) for v in ids]

    def __len__(self) -> int:
        return self.total

    def files(self) -> list[Path]:
        return self.paths

    def row_id(self, index: int) -> str:
        return self.ids[index] if self.ids is not None else str(index)

    def read(self, index: int) -> Row:
        return {name: self._cell(name, self.values[column][index]) for name, column in self.mapping.items()}

    def _cell(self, name: str, value: Any) -> np.ndarray:
        if value is None:
            raise RowError(f"input '{name}': the cell is empty")
        return np.asarray(value)

    def needed(self, columns: Sequence[str]) -> list[str]:
        """Columns to read: the mapped ones and the id column."""
        mapping = column_mapping(columns, self.inputs, self.spec.columns, self.spec.id_column)
        return list(
            dict.fromkeys([*mapping.values(), *([self.spec.id_column] if self.spec.id_column else [])])
        )


class ParquetDataset(_TableDataset):
    kind = "parquet"

    def __init__(self, spec: DatasetSpec, inputs: Mapping[str, TensorSpec], paths: Sequence[Path]) -> None:
        super().__init__(spec, inputs)
        pa = pyarrow()
        schema = pa.parquet.read_schema(paths[0])
        columns = list(schema.names)
        wanted = self.needed(columns)
        tables = [pa.parquet.read_table(p, columns=wanted) for p in paths]
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        values = {c: _column_values(table.column(c)) for c in wanted}
        self._setup(paths, columns, values)


def _column_values(column: Any) -> Sequence[Any]:
    """A Parquet column as something indexable by row: a numpy array for scalars and tensor columns, else the
    Python values (lists)."""
    import pyarrow as pa

    column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if isinstance(column.type, pa.ExtensionType):  # tensor columns (pyarrow's, Ray Data's)
        if hasattr(column, "to_numpy_ndarray"):
            return column.to_numpy_ndarray()
        return column.to_numpy(zero_copy_only=False)
    if column.null_count == 0:
        if pa.types.is_fixed_size_list(column.type) and pa.types.is_primitive(column.type.value_type):
            return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)
        if pa.types.is_primitive(column.type):
            return column.to_numpy(zero_copy_only=False)
    return column.to_pylist()


class CsvDataset(_TableDataset):
    kind = "csv"

    def __init__(self, spec: DatasetSpec, inputs: Mapping[str, TensorSpec], paths: Sequence[Path]) -> None:
        super().__init__(spec, inputs)
        header: list[str] | None = None
        rows: list[list[str]] = []
        for path in paths:
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                first = next(reader, None)
                if first is None:
                    continue
                if header is None:
                    header = first
                elif first != header:
                    raise InvalidArgumentError(
                        f"{path.name} has columns {first}, the first file has {header}"
                    )
                rows.extend(reader)
        if header is None:
            raise InvalidArgumentError(f"{spec.path}: the CSV files are empty")
        wanted = self.needed(header)
        positions = {c: header.index(c) for c in wanted}
        values = {c: [r[i] if i < len(r) else None for r in rows] for c, i in positions.items()}
        self._setup(paths, header, values)

    def _cell(self, name: str, value: Any) -> np.ndarray:
        if value is None:
            raise RowError(f"input '{name}': the row has too few cells")
        if self.inputs[name].datatype.name == "BYTES":
            return np.array(value.encode(), dtype=np.object_)
        text = value.strip().removeprefix("[").removesuffix("]").replace(",", " ")
        try:
            numbers = [float(v) for v in text.split()]
        except ValueError:
            raise RowError(f"input '{name}': {value!r} is not a number or a list of numbers") from None
        if not numbers:
            raise RowError(f"input '{name}': the cell is empty")
        return np.array(numbers[0] if len(numbers) == 1 and not self.inputs[name].dims else numbers)
