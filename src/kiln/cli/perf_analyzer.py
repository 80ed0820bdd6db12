"""``kiln perf-analyzer ARGS...``: NVIDIA's perf_analyzer (shipped in the tritonclient wheel), run with the
environment it needs, so no one sets ``LD_LIBRARY_PATH`` by hand.

The binary links against ``libcudart.so.12`` (from the PyPI package ``nvidia-cuda-runtime-cu12``) and Debian's
``libb64-0d``, which the wheel does not carry; ``make bench-setup`` installs both. Every argument after the
subcommand goes to perf_analyzer unchanged (``-m MODEL -u 127.0.0.1:8001 -i grpc ...``)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from kiln.errors import NotFoundError

SETUP_HINT = (
    "run `make bench-setup` (it installs nvidia-cuda-runtime-cu12 into the venv and Debian's libb64-0d)"
)


def executable(bin_dir: Path | None = None) -> Path:
    """perf_analyzer beside this interpreter (the venv's bin/, where the tritonclient wheel puts it)."""
    path = (bin_dir or Path(sys.executable).parent) / "perf_analyzer"
    if not path.exists():
        raise NotFoundError(
            f"{path} not found: install tritonclient==2.50.0 (its manylinux wheel carries it)"
        )
    return path


def cuda_runtime_lib(site_dirs: list[Path] | None = None) -> Path:
    """The folder holding libcudart.so.12: site-packages/nvidia/cuda_runtime/lib."""
    candidates = [d / "nvidia" / "cuda_runtime" / "lib" for d in site_dirs or []]
    if importlib.util.find_spec("nvidia") is not None:
        spec = importlib.util.find_spec("nvidia.cuda_runtime")
        if spec is not None and spec.submodule_search_locations:
            candidates += [Path(p) / "lib" for p in spec.submodule_search_locations]
    for lib in candidates:
        if (lib / "libcudart.so.12").exists():
            return lib
    raise NotFoundError(f"perf_analyzer needs libcudart.so.12, which is not installed: {SETUP_HINT}")


def environment(base: dict[str, str] | None = None, site_dirs: list[Path] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the CUDA runtime's folder first on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    lib = str(cuda_runtime_lib(site_dirs))
    env["LD_LIBRARY_PATH"] = lib + (os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "perf-analyzer",
        help="run NVIDIA's perf_analyzer (from the tritonclient wheel) with the libraries it needs",
        description="Every argument goes to perf_analyzer unchanged, e.g. "
        "`kiln perf-analyzer -m add_sub -u 127.0.0.1:8001 -i grpc --concurrency-range 1:4`. "
        + SETUP_HINT
        + ".",
        add_help=False,  # -h / --help go to perf_analyzer
    )
    p.add_argument("args", nargs="...", help="perf_analyzer's own arguments")
    p.set_defaults(func=lambda ns: run(ns.args))


def run(args: list[str]) -> int:
    from kiln.errors import KilnError

    try:
        path, env = executable(), environment()
    except KilnError as e:
        print(f"kiln perf-analyzer: {e.message}", file=sys.stderr)
        return 2
    # replaces this process: perf_analyzer's exit status is ours
    os.execve(path, [str(path), *args], env)
    return 0  # not reached
