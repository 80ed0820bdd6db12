"""The kinds of a custom metric family, in Triton's numbering (the Python backend's ``pb_utils.MetricKind``)."""

from __future__ import annotations

import enum


class MetricKind(enum.IntEnum):
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


__all__ = ["MetricKind"]
