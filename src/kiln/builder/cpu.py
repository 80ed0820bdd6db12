"""What the build machine's CPU offers INT8 kernels, as far as it matters to the quantiser.

ONNX Runtime's x86 U8S8 kernels multiply unsigned 8-bit activations by signed 8-bit weights. With VNNI
(AVX-512 VNNI, AVX-VNNI, AMX) the products are summed into 32 bits exactly. Without it (AVX2, AVX-512F/BW)
they use ``vpmaddubsw``, which adds two products into a saturating 16-bit integer: large activation codes
times large weights overflow, and the model computes something other than what was calibrated. ONNX Runtime's
own remedy is ``reduce_range``: 7-bit weights, whose pair sums (255 x 64 x 2) always fit.
"""

from __future__ import annotations

import platform
from enum import Enum
from pathlib import Path

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
X86 = frozenset({"x86_64", "amd64", "i386", "i686"})


class Int8Dot(Enum):
    EXACT = "exact"  # VNNI / AMX on x86, or not x86 at all (Arm's dot-product kernels accumulate in 32 bits)
    SATURATING = "saturating"  # x86 without VNNI: U8S8 pair sums saturate at 16 bits
    UNKNOWN = "unknown"  # x86 whose flags could not be read


def int8_dot(cpuinfo: Path = Path("/proc/cpuinfo"), machine: str | None = None) -> Int8Dot:
    """How this machine's CPU sums 8-bit products in ONNX Runtime's U8S8 kernels."""
    arch = (machine or platform.machine()).lower()
    if arch not in X86:
        return Int8Dot.EXACT
    try:
        text = cpuinfo.read_text()
    except OSError:
        return Int8Dot.UNKNOWN
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None
    )
    if flags is None:
        return Int8Dot.UNKNOWN
    return Int8Dot.EXACT if VNNI_FLAGS & set(flags) else Int8Dot.SATURATING


def default_reduce_range(dot: Int8Dot) -> bool:
    """7-bit weights where the U8S8 kernels saturate (or might: flags unknown on x86)."""
    return dot is not Int8Dot.EXACT
