"""Pre- and post-processing for the vision examples: image loading, scaling, resizing and letterboxing,
box decoding and NMS, mask colouring and blending, PNG writing.

Only NumPy and Pillow (the ``examples`` extra); importing ``kiln`` does not import this package. The same
functions run in a client today and can run server-side in an ensemble later.
"""

from kiln.vision.images import MAX_PIXELS, ImageError, load_image, read, sample, save_png, to_rgb
from kiln.vision.preprocess import Placement, Scaling, center_crop, fit, scale, to_nchw

__all__ = [
    "MAX_PIXELS",
    "ImageError",
    "Placement",
    "Scaling",
    "center_crop",
    "fit",
    "load_image",
    "read",
    "sample",
    "save_png",
    "scale",
    "to_nchw",
    "to_rgb",
]
