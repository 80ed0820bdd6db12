"""Import hygiene, each check in a fresh interpreter: the serving layers under the transports import neither
the transports nor a heavy runtime, and ``import kiln`` and ``kiln --help`` work with torch, openvino and
tensorflow (and ncnn, pnnx) not installed (an import of them is refused and recorded)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TRANSPORTS = ("grpc", "tritonclient")
RUNTIMES = ("torch", "openvino", "tensorflow", "ncnn", "pnnx")

# refuses the runtimes as if they were not installed, records each attempt, runs the body, then prints what it
# recorded and which watched packages ended up in sys.modules (as one JSON line)
PROBE = """
import importlib.abc, json, runpy, sys
RUNTIMES, WATCHED, attempts = {runtimes!r}, {watched!r}, []

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in RUNTIMES:
            attempts.append(name)
            raise ModuleNotFoundError(f"No module named {{name!r}}")
        return None

sys.meta_path.insert(0, NotInstalled())
exit_code = None
try:
{body}
except SystemExit as e:
    exit_code = e.code
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(WATCHED))
print(json.dumps({{"attempts": attempts, "loaded": loaded, "exit": exit_code}}))
"""


def probe(*body: str) -> dict[str, object]:
    code = PROBE.format(
        runtimes=RUNTIMES, watched=TRANSPORTS + RUNTIMES, body="\n".join("    " + b for b in body)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_the_serving_layers_import_no_transport_and_no_runtime() -> None:
    seen = probe("import kiln.scheduling, kiln.core, kiln.backends, kiln.model, kiln.lifecycle")
    assert seen == {"attempts": [], "loaded": [], "exit": None}


def test_import_kiln_needs_no_optional_runtime() -> None:
    assert probe("import kiln, kiln.cli.main") == {"attempts": [], "loaded": [], "exit": None}


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"], ["build", "--help"], ["bench", "--help"]])
def test_kiln_help_needs_no_optional_runtime(argv: list[str]) -> None:
    seen = probe(f"sys.argv = ['kiln', *{argv!r}]", "runpy.run_module('kiln', run_name='__main__')")
    assert seen["exit"] == 0 and seen["attempts"] == [], seen


def test_the_kiln_command_prints_its_subcommands_and_serve_flags() -> None:
    script = Path(sys.executable).with_name("kiln")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "kiln"]
    usage = subprocess.run(
        [*command, "--help"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    assert all(name in usage for name in ("serve", "build", "bench"))
    serve = subprocess.run(
        [*command, "serve", "--help"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    for flag in ("--model-repository", "--http-port", "--grpc-port", "--metrics-port", "--exit-on-error",
                 "--log-verbose", "--disable-auto-complete-config"):  # fmt: skip
        assert flag in serve


def test_plain_serving_installs_no_heavy_runtime() -> None:
    """`make serve` installs the core dependencies only (`pip install -e .`), and those name no heavy runtime:
    serving an ONNX file must never pull torch (whose PyPI build is the CUDA one), TensorFlow, OpenVINO or Ray."""
    import re

    import tomllib

    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[\[=<>~! ]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}
    heavy = {
        "torch",
        "tensorflow",
        "tensorflow-cpu",
        "openvino",
        "nncf",
        "ray",
        "ai-edge-litert",
        "ncnn",
        "pnnx",
    }
    assert names and not names & heavy, names & heavy
    makefile = (root / "Makefile").read_text()
    serve = re.search(r"^serve: (\S+)$", makefile, re.MULTILINE)
    assert serve is not None
    recipe = makefile.split(f"{serve.group(1)}:", 1)[1].split("\n\n", 1)[0]
    installs = [
        line.strip() for line in recipe.splitlines() if "pip install" in line and "--upgrade pip" not in line
    ]
    assert installs == ["$(BIN)/pip install -q -e ."], installs
