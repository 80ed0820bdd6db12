"""What the example scripts share: their common arguments, result file names, and errors shown as one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tritonclient.utils import InferenceServerException

from kiln.errors import KilnError
from kiln.vision.images import SAMPLE_PREFIX
from kiln.vision.remote import PROTOCOLS

# what a script reports as "error: ..." (exit 1) instead of a traceback: bad images and arguments, files it
# cannot read or write, missing extras, and the server's answers
SCRIPT_ERRORS = (KilnError, InferenceServerException, ValueError, OSError)


def error_message(error: BaseException) -> str:
    """The text of an error a script should show: a Kiln error's message, the server's answer, or str()."""
    message = getattr(error, "message", None)
    if callable(message):  # tritonclient's InferenceServerException.message()
        message = message()
    return str(message or error)


def run(body: Callable[[], object]) -> int:
    """Run a script's work: 0, or 1 after printing ``error: ...`` for any of :data:`SCRIPT_ERRORS`."""
    try:
        body()
    except SCRIPT_ERRORS as e:
        print(f"error: {error_message(e)}", file=sys.stderr)
        return 1
    return 0


def client_parser(
    description: str, model: str, output_dir: Path | None = Path(".")
) -> argparse.ArgumentParser:
    """The arguments every example client takes: images, ``-m`` model, ``-i`` protocol, ``-u`` URL, ``-o``
    folder for the result PNGs (none written when ``output_dir`` is None and no ``-o`` is given)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "images", nargs="+", help=f"image files, or {SAMPLE_PREFIX}NAME for scikit-image's samples"
    )
    p.add_argument("-m", "--model", default=model, help=f"model name (default {model})")
    p.add_argument("-i", "--protocol", choices=PROTOCOLS, default="http")
    p.add_argument("-u", "--url", help="server address (default 127.0.0.1:8000 for http, :8001 for grpc)")
    p.add_argument("-o", "--output-dir", type=Path, default=output_dir, help="folder for the result PNGs")
    return p


def parse_client_args(
    p: argparse.ArgumentParser, argv: list[str] | None, model: str, pipeline: str
) -> argparse.Namespace:
    """Parse a client's arguments with ``--pipeline`` added: send the encoded images to the server-side
    pipeline ensemble instead, ``-m`` then naming ``pipeline`` unless given."""
    p.add_argument(
        "--pipeline", action="store_true",
        help=f"send the encoded images to the server-side pipeline (-m then defaults to {pipeline})",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.pipeline and args.model == model:
        args.model = pipeline
    return args


def output_path(directory: Path, image: str, suffix: str) -> Path:
    """``directory/<image name>_<suffix>.png`` for an image argument (a path or ``skimage:NAME``)."""
    stem = image[len(SAMPLE_PREFIX) :] if image.startswith(SAMPLE_PREFIX) else Path(image).stem
    return directory / f"{stem}_{suffix}.png"


def prepare_main(writers: Sequence[Callable[[Path], Path]], doc: str, argv: list[str] | None = None) -> int:
    """A prepare script: each ``write(REPOSITORY)`` for the one argument, printing the model folders written."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repository", type=Path, help="model repository to write into (created if missing)")
    args = p.parse_args(argv)
    return run(lambda: [print(write(args.repository)) for write in writers])
