"""kiln batch's flags -> BatchOptions; --help and a missing Ray work without Ray installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kiln.batch import OutputFormat, Preprocessing
from kiln.cli.main import build_parser
from kiln.errors import InvalidArgumentError

BLOCK_RAY = "import sys; sys.modules['ray'] = None; "


def _options(*argv: str):  # type: ignore[no-untyped-def]
    from kiln.cli.batch import options_from_args

    return options_from_args(build_parser().parse_args(["batch", *argv]))


def test_flags_fill_the_options() -> None:
    options = _options("repo/m", "--input", "d", "--output", "o", "--columns", "x=col", "--preprocessing",
                       "imagenet", "--format", "npy", "--ray", "auto", "--ray-resources", "slot=1",
                       "--ray-num-cpus", "0.5")  # fmt: skip
    assert (options.repository, options.model) == (Path("repo"), "m")
    assert options.columns == {"x": "col"}
    assert options.preprocessing is Preprocessing.IMAGENET
    assert options.output_format is OutputFormat.NPY
    assert options.ray.resources == {"slot": 1.0} and options.ray.num_cpus == 0.5


def test_the_model_is_named_once() -> None:
    assert _options("--model-repository", "r", "--model", "m", "--input", "d", "--output", "o").model == "m"
    with pytest.raises(InvalidArgumentError, match="give the model"):
        _options("--input", "d", "--output", "o")
    with pytest.raises(InvalidArgumentError, match="not both"):
        _options("r/m", "--model", "m", "--input", "d", "--output", "o")


def test_help_and_a_missing_ray() -> None:
    code = BLOCK_RAY + "from kiln.cli.main import main; main(['batch', '--help'])"
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0 and "--ray ADDRESS" in run.stdout
    code = BLOCK_RAY + "from kiln.batch.ray import import_ray; import_ray()"
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert "pip install 'kiln[ray]'" in run.stderr
