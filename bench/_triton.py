"""Real Triton from the nvidia-pytriton wheel (bench/setup_triton.sh): where it is and how to run it."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from _common import ServerEndpoints


@dataclasses.dataclass(frozen=True)
class Triton:
    """The tritonserver of the nvidia-pytriton wheel (bench/setup_triton.sh) and how to run it."""

    binary: Path
    libs: Path
    backends: Path

    @classmethod
    def find(cls, venv: Path, backends: Path) -> Triton:
        sites = sorted(venv.glob("lib/python3*/site-packages"))
        if not sites:
            raise SystemExit(f"no site-packages under {venv}; run `bash bench/setup_triton.sh`")
        triton = cls(
            sites[0] / "pytriton/tritonserver/bin/tritonserver", sites[0] / "nvidia_pytriton.libs", backends
        )
        for path in (triton.binary, triton.libs, backends / "python" / "triton_python_backend_stub"):
            if not path.exists():
                raise SystemExit(f"{path} not found; run `bash bench/setup_triton.sh`")
        return triton

    def env(self) -> dict[str, str]:
        """Its libraries first; nothing of Kiln's venv (the stub embeds the system Python)."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["LD_LIBRARY_PATH"] = str(self.libs) + (
            os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else ""
        )
        return env

    def command(
        self, repository: Path, endpoints: ServerEndpoints, extra_args: Sequence[str] = ()
    ) -> list[str]:
        return [
            str(self.binary),
            "--model-repository", str(repository),
            "--backend-directory", str(self.backends),
            "--http-address", "127.0.0.1", "--http-port", str(endpoints.http_port),
            "--grpc-address", "127.0.0.1", "--grpc-port", str(endpoints.grpc_port),
            "--metrics-address", "127.0.0.1", "--metrics-port", str(endpoints.metrics_port),
            "--exit-timeout-secs", "5",
            "--allow-gpu-metrics", "false",  # no GPU here: spares the DCGM start-up attempt
            *extra_args,
        ]  # fmt: skip


def add_triton_options(parser: argparse.ArgumentParser) -> None:
    """--triton-venv and --triton-backends: where bench/setup_triton.sh put Triton ($TRITON_VENV, $TRITON_BACKENDS)."""
    parser.add_argument(
        "--triton-venv", type=Path, default=Path(os.environ.get("TRITON_VENV", "/tmp/pytriton-venv"))
    )
    parser.add_argument(
        "--triton-backends",
        type=Path,
        default=Path(os.environ.get("TRITON_BACKENDS", "/tmp/triton-backends")),
    )
