"""Reading and writing images, with clear errors for anything that is not a usable image."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from kiln.errors import InvalidArgumentError, MissingDependencyError

MAX_PIXELS = 50_000_000  # about 8K x 6K; a bigger image is almost surely a mistake or a decompression bomb


class ImageError(InvalidArgumentError):
    """An input that is not an image Kiln can use: missing, empty, unreadable or too large."""


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - the examples extra brings Pillow
        raise MissingDependencyError("Pillow", "examples") from e
    return Image


def load_image(source: str | Path | bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a file (or its bytes) into an ``(H, W, 3)`` uint8 RGB array.

    The size is checked from the header before any pixel is decoded, so a huge image costs nothing.
    """
    Image = _pil()
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"cannot read image {name!r}: no such file")
        data = path.read_bytes()
    if not data:
        raise ImageError(f"cannot read image {name!r}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image {name!r} is too large: {e} The limit is {max_pixels} pixels.") from None
    except Exception:
        raise ImageError(
            f"{name!r} is not an image (no known image format: PNG, JPEG, GIF, BMP, TIFF, ...)"
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"image {name!r} is too large: {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels} pixels"
        )
    if width == 0 or height == 0:
        raise ImageError(f"image {name!r} has no pixels ({width}x{height})")
    try:
        image.load()
    except Exception as e:
        raise ImageError(f"image {name!r} is truncated or corrupt: {e}") from None
    return np.asarray(image.convert("RGB"))


SAMPLE_PREFIX = "skimage:"


def sample(name: str) -> np.ndarray:
    """One of scikit-image's bundled sample images (``chelsea``, ``coffee``, ``astronaut``, ``page``,
    ``text``, ...) as ``(H, W, 3)`` uint8 RGB."""
    try:
        import skimage.data
    except ImportError as e:
        raise MissingDependencyError("scikit-image (sample images)", "examples") from e
    if name.startswith("_") or not callable(getattr(skimage.data, name, None)):
        raise ImageError(
            f"{name!r} is not one of scikit-image's sample images (e.g. chelsea, coffee, page, text)"
        )
    return to_rgb(getattr(skimage.data, name)())


def read(source: str | Path) -> np.ndarray:
    """A client's image argument: ``skimage:NAME`` for a sample image, otherwise a file path."""
    text = str(source)
    if text.startswith(SAMPLE_PREFIX):
        return sample(text[len(SAMPLE_PREFIX) :])
    return load_image(source)


def encoded(source: str | Path) -> bytes:
    """A client's image argument as encoded bytes, to send to a server-side pipeline: a file as it is on disk,
    a ``skimage:NAME`` sample as a PNG (lossless: the server decodes the very pixels :func:`read` gives)."""
    text = str(source)
    if text.startswith(SAMPLE_PREFIX):
        buffer = io.BytesIO()
        _pil().fromarray(sample(text[len(SAMPLE_PREFIX) :])).save(buffer, format="PNG")
        return buffer.getvalue()
    path = Path(source)
    if not path.is_file():
        raise ImageError(f"cannot read image {text!r}: no such file")
    return path.read_bytes()


def to_rgb(image: np.ndarray) -> np.ndarray:
    """An ``(H, W)`` grey, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA uint8 array as ``(H, W, 3)`` RGB."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ImageError(f"expected a uint8 image array, got {getattr(image, 'dtype', type(image).__name__)}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.ascontiguousarray(image[:, :, :3])
    raise ImageError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {image.shape}")


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an RGB (or grey) uint8 array as a PNG file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _pil().fromarray(to_rgb(image)).save(path, format="PNG")
    return path
