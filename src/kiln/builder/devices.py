"""The build's device: the target's runtime present before any work, and the GPU instance options for
``--device gpu`` (the ONNX Runtime backend's CUDA / TensorRT providers)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from kiln.builder.options import BuildOptions, Device, Precision, Target, format_shape_spec
from kiln.errors import InvalidArgumentError, UnavailableError
from kiln.perf.runners import GpuOptions


def device_check(options: BuildOptions) -> GpuOptions | None:
    """Fail before any work when the target's runtime is missing; for ``--device gpu``, the GPU instance (with
    the build's TensorRT options) the ONNX Runtime backend runs the candidates on."""
    if options.target is Target.OPENVINO:
        from kiln.builder.openvino import import_openvino

        import_openvino()
    if options.target is Target.NCNN:
        from kiln.builder.ncnn import check_tools

        check_tools(options.precision)
    if options.device is not Device.GPU:
        return None
    if options.target is not Target.ONNXRUNTIME:
        raise InvalidArgumentError("--device gpu is available for --target onnxruntime only")
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise UnavailableError(
            "GPU requested but this onnxruntime has no CUDAExecutionProvider (no GPU or CPU-only build: "
            f"available providers are {', '.join(available)}); install onnxruntime-gpu on a machine with a GPU"
        )
    return GpuOptions(tensorrt=tensorrt_options(options))


def tensorrt_options(options: BuildOptions) -> dict[str, str]:
    """TensorRT execution-provider options for the GPU path: the shape profile, the precision, an engine cache
    under the build's temporary folder (the server keeps its own, ``trt_cache`` in config.pbtxt)."""
    trt: dict[str, str] = {
        "trt_fp16_enable": "1" if options.precision in (Precision.FP16, Precision.BEST) else "0",
        "trt_int8_enable": "1" if options.precision is Precision.INT8 else "0",  # the QDQ model's own scales
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(Path(tempfile.gettempdir()) / "kiln-trt-cache"),
    }
    for kind, shapes in (
        ("min", options.profile.min),
        ("opt", options.profile.opt),
        ("max", options.profile.max),
    ):
        if shapes:
            trt[f"trt_profile_{kind}_shapes"] = format_shape_spec(shapes)
    return trt
