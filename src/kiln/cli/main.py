"""The ``kiln`` command: subcommands parse arguments into option objects and call the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kiln import __version__
from kiln.cli import batch, bench, build, perf_analyzer, serve, tune


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiln",
        description="Build models into fast, checked artifacts and serve them (Triton-compatible).",
    )
    parser.add_argument("--version", action="version", version=f"kiln {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve.add_parser(sub)
    build.add_parser(sub)
    bench.add_parser(sub)
    tune.add_parser(sub)
    batch.add_parser(sub)
    perf_analyzer.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["perf-analyzer"]:  # every argument after it is perf_analyzer's, options included
        return perf_analyzer.run(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
