"""``kiln build``: compile a model into an optimised, quantised, accuracy-checked artifact in a repository."""

from kiln.builder.accuracy import AccuracyGateError, AccuracyReport
from kiln.builder.options import (
    BuildOptions,
    CalibrationMethod,
    CalibrationOptions,
    Device,
    Precision,
    Preprocessing,
    ShapeProfile,
    Target,
    Tolerance,
    parse_shape_spec,
)
from kiln.builder.pipeline import BuildResult, build

__all__ = [
    "AccuracyGateError",
    "AccuracyReport",
    "BuildOptions",
    "BuildResult",
    "CalibrationMethod",
    "CalibrationOptions",
    "Device",
    "Precision",
    "Preprocessing",
    "ShapeProfile",
    "Target",
    "Tolerance",
    "build",
    "parse_shape_spec",
]
