"""``kiln batch``: parse flags into :class:`kiln.batch.BatchOptions` and call :func:`kiln.batch.run_batch`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

PREPROCESSING = ("none", "unit", "inception", "vgg", "imagenet")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "batch",
        help="offline batch inference of a repository model over a dataset (locally or on Ray)",
        description="Run REPO/NAME (loaded as kiln serve loads it) over --input: a folder of images, .npy/.npz "
        "files, or Parquet/CSV columns; write its outputs to --output one shard at a time (Parquet or .npy). "
        "A rerun skips the finished shards; bad rows are recorded in failures.jsonl and never stop the job.",
    )
    p.add_argument("model_path", nargs="?", type=Path, metavar="REPO/NAME", help="a repository model folder")
    p.add_argument("--model-repository", type=Path, metavar="REPO", help="the repository (with --model)")
    p.add_argument("--model", metavar="NAME", help="the model's name in --model-repository")
    p.add_argument("--version", type=int, help="model version (default: the one kiln serve would serve)")
    p.add_argument(
        "--input", type=Path, required=True, metavar="DATASET", help="images, .npy/.npz, .parquet/.csv"
    )
    p.add_argument("--output", type=Path, required=True, metavar="OUT", help="output folder")
    p.add_argument("--columns", default="", metavar="INPUT=COLUMN,...", help="table columns for the inputs")
    p.add_argument("--id-column", metavar="COLUMN", help="table column naming each row (default: row number)")
    p.add_argument(
        "--preprocessing",
        choices=PREPROCESSING,
        help="images: as kiln build (default: the one recorded in the version's build.json)",
    )
    p.add_argument("--batch-size", type=int, help="rows per model run (default: preferred / max batch size)")
    p.add_argument("--shard-size", type=int, default=1024, help="rows per output shard (default 1024)")
    p.add_argument("--format", choices=("parquet", "npy"), default="parquet", help="output format")
    p.add_argument("--workers", type=int, help="threads reading and pre-processing rows (default: cores)")
    p.add_argument("--overwrite", action="store_true", help="replace another job's shards in --output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    ray = p.add_argument_group("Ray Data executor (needs the ray extra)")
    ray.add_argument(
        "--ray", metavar="ADDRESS", help="run on Ray: 'auto' (the running cluster), 'local', HOST:PORT"
    )
    ray.add_argument(
        "--ray-concurrency", type=int, metavar="N", help="actors holding the model (default: nodes)"
    )
    ray.add_argument(
        "--ray-num-cpus", type=float, default=1.0, metavar="CPUS", help="CPUs per actor (default 1)"
    )
    ray.add_argument(
        "--ray-threads", type=int, metavar="N", help="threads per actor (default: the node's cores)"
    )
    ray.add_argument(
        "--ray-resources", default="", metavar="NAME=AMOUNT,...", help="custom resources per actor"
    )
    p.set_defaults(func=run)  # fmt: skip


def options_from_args(args: argparse.Namespace) -> Any:
    from kiln.batch import BatchOptions, OutputFormat, Preprocessing, RayOptions
    from kiln.batch.options import parse_columns, parse_resources
    from kiln.errors import InvalidArgumentError

    if args.model_path is not None:
        if args.model_repository or args.model:
            raise InvalidArgumentError(
                "give either REPO/NAME or --model-repository REPO --model NAME, not both"
            )
        repository, model = args.model_path.parent, args.model_path.name
    elif args.model_repository and args.model:
        repository, model = args.model_repository, args.model
    else:
        raise InvalidArgumentError("give the model: REPO/NAME, or --model-repository REPO --model NAME")
    ray = None
    if args.ray:
        ray = RayOptions(
            address=args.ray,
            concurrency=args.ray_concurrency,
            num_cpus=args.ray_num_cpus,
            threads=args.ray_threads,
            resources=parse_resources(args.ray_resources),
        )
    return BatchOptions(
        repository=repository,
        model=model,
        version=args.version,
        input=args.input,
        output=args.output,
        columns=parse_columns(args.columns),
        id_column=args.id_column,
        preprocessing=Preprocessing(args.preprocessing) if args.preprocessing else None,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        output_format=OutputFormat(args.format),
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        ray=ray,
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from kiln.errors import KilnError

    err = Console(stderr=True, highlight=False)
    try:
        from kiln.batch import run_batch
        from kiln.batch.summary import print_summary

        summary = run_batch(options_from_args(args), err)
    except KilnError as e:
        err.print(f"[red]kiln batch failed:[/red] {escape(e.message)}", soft_wrap=True)
        return 1
    print_summary(summary, Console(highlight=False))
    return 0
