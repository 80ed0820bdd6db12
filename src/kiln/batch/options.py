"""Typed options of ``kiln batch``: the CLI parses its flags into these, the Python API takes them as they are."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from kiln.builder.options import Preprocessing
from kiln.errors import InvalidArgumentError

__all__ = ["BatchOptions", "OutputFormat", "Preprocessing", "RayOptions", "parse_columns", "parse_resources"]


class OutputFormat(enum.Enum):
    PARQUET = "parquet"  # one part-NNNNN.parquet per shard (pyarrow, the batch extra)
    NPY = "npy"  # one part-NNNNN/ folder per shard: row_id.npy and <output>.npy


@dataclass(frozen=True)
class RayOptions:
    """The Ray Data executor: where the cluster is and how the actor pool is sized."""

    address: str = "auto"  # "auto": the running cluster (RAY_ADDRESS or the local one); else HOST:PORT
    concurrency: int | None = None  # actors holding the model; None: one per node
    num_cpus: float = 1.0  # CPUs each actor asks for (fractions allowed, so reading tasks still fit)
    threads: int | None = (
        None  # intra-op threads and decode threads per actor (None: the node's cores / actors)
    )
    resources: dict[str, float] = field(default_factory=dict)  # custom resources each actor asks for


@dataclass(frozen=True)
class BatchOptions:
    repository: Path
    model: str
    input: Path  # a folder of images, .npy/.npz files, or a Parquet/CSV file (or folder of them)
    output: Path  # a folder: one file per shard, a manifest, failures.jsonl, summary.json
    version: int | None = None  # None: the version kiln serve would serve (the highest ready one)
    columns: dict[str, str] = field(default_factory=dict)  # input name -> Parquet/CSV column
    id_column: str | None = None  # Parquet/CSV column that names each row (default: the row number)
    preprocessing: Preprocessing | None = None  # images: None means the one recorded for the model
    batch_size: int | None = None  # None: the model's preferred batch size, else its max_batch_size
    shard_size: int = 1024  # rows per shard (the unit of resume)
    output_format: OutputFormat = OutputFormat.PARQUET
    workers: int | None = None  # decode / pre-processing threads (None: one per core)
    overwrite: bool = False  # start again in an output folder that holds another job's shards
    progress: bool = True
    ray: RayOptions | None = None  # None: the local executor

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise InvalidArgumentError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InvalidArgumentError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 1:
            raise InvalidArgumentError(f"--workers must be >= 1, got {self.workers}")


def parse_columns(text: str) -> dict[str, str]:
    """``INPUT0=col_a,INPUT1=col_b`` -> ``{"INPUT0": "col_a", "INPUT1": "col_b"}``."""
    mapping: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, column = item.partition("=")
        if not sep or not name or not column:
            raise InvalidArgumentError(f"column mapping '{item}' must be INPUT=COLUMN")
        mapping[name.strip()] = column.strip()
    return mapping


def parse_resources(text: str) -> dict[str, float]:
    """``node_a=1,gpu_slot=0.5`` -> custom resources for each Ray actor."""
    resources: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, amount = item.partition("=")
        try:
            resources[name.strip()] = float(amount) if sep else 1.0
        except ValueError:
            raise InvalidArgumentError(f"resource '{item}' must be NAME=AMOUNT") from None
    return resources
