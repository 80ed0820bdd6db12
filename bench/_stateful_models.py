"""The models of bench/stateful.py: two ONNX models with a 4 MiB FP32 input (shared memory vs the wire), and
Silero VAD twice, once per sequence-batching strategy (oldest, as kiln.examples.vad writes it, and direct)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np

LARGE_ELEMENTS = 1 << 20  # FP32 elements per batch-1 request: 4 MiB
REDUCE = "reduce_4mb"  # OUTPUT0 = mean of INPUT0 over its elements: [batch, 1], 4 bytes back
IDENTITY = "identity_4mb"  # OUTPUT0 = INPUT0: 4 MiB back
LARGE_MODELS = (REDUCE, IDENTITY)
LARGE_MAX_BATCH = 8

_LARGE_CONFIG = """\
name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {elements} ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {output} ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""


def large_output_elements(model: str) -> int:
    return 1 if model == REDUCE else LARGE_ELEMENTS


def large_expected(model: str, x: np.ndarray) -> np.ndarray:
    """What `model` answers to INPUT0 = `x` ([batch, LARGE_ELEMENTS])."""
    return x.mean(axis=1, keepdims=True, dtype=np.float32) if model == REDUCE else x


def build_large_repository(root: Path) -> Path:
    """`root` with reduce_4mb and identity_4mb: FP32 [batch, 1048576] in, `max_batch_size: 8`, no batcher."""
    import onnx
    from onnx import TensorProto, helper

    for name in LARGE_MODELS:
        out = large_output_elements(name)
        if name == REDUCE:
            node = helper.make_node("ReduceMean", ["INPUT0"], ["OUTPUT0"], axes=[1], keepdims=1)
        else:
            node = helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])
        graph = helper.make_graph(
            [node],
            name,
            [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", LARGE_ELEMENTS])],
            [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", out])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln")
        model.ir_version = 8
        onnx.checker.check_model(model)
        model_dir = root / name
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(model_dir / "1" / "model.onnx"))
        (model_dir / "config.pbtxt").write_text(
            _LARGE_CONFIG.format(name=name, max_batch=LARGE_MAX_BATCH, elements=LARGE_ELEMENTS, output=out)
        )
    return root


# ------------------------------------------------------------------------------------------- Silero VAD

VAD_DIRECT_SUFFIX = "_direct"


def direct_config(config: str, name: str) -> str:
    """kiln.examples.vad's config with the `direct { }` strategy instead of `oldest { ... }`, as model `name`;
    everything else (max_batch_size, idle time, the two states) unchanged."""
    renamed, named = re.subn(r'^name: "[^"]*"', f'name: "{name}"', config, count=1, flags=re.M)
    direct, replaced = re.subn(r"^(\s*)oldest \{[^{}]*\}", r"\1direct { }", renamed, count=1, flags=re.M)
    if named != 1 or replaced != 1:
        raise ValueError(f"unexpected silero_vad config (no name or no oldest {{ }} block):\n{config}")
    return direct


def build_vad_repository(root: Path) -> tuple[str, str]:
    """`root` with kiln.examples.vad's silero_vad (oldest strategy, its own config) and silero_vad_direct (the
    same model file, direct strategy); the two model names."""
    from kiln.examples import vad

    oldest_dir = vad.write_vad(root)
    direct_name = vad.MODEL + VAD_DIRECT_SUFFIX
    direct_dir = root / direct_name
    (direct_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(oldest_dir / "1" / "model.onnx", direct_dir / "1" / "model.onnx")
    config = (oldest_dir / "config.pbtxt").read_text()
    (direct_dir / "config.pbtxt").write_text(direct_config(config, direct_name))
    return vad.MODEL, direct_name


def vad_session(model_path: Path):  # -> onnxruntime.InferenceSession
    """The wrapped VAD model (vad.serving_model(), as served) with Kiln's session options for one CPU instance
    (src/kiln/backends/onnxruntime.py: intra-op threads = nproc, inter-op 1, all graph optimisations)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
