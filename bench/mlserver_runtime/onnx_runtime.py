"""A minimal ONNX Runtime runtime for MLServer (the peer in bench/vs_mlserver.py).

MLServer ships no ONNX runtime, so this is the smallest honest one: one InferenceSession per model with Kiln's
default session options for one CPU instance (intra_op_num_threads = nproc, inter_op_num_threads = 1, all graph
optimisations); inputs decoded and outputs encoded with MLServer's NumpyCodec. Adaptive batching is MLServer's
own (`max_batch_size` / `max_batch_time` in model-settings.json): it merges requests along the first dimension
before `predict` and splits the response after it.

model-settings.json: {"name": ..., "implementation": "onnx_runtime.OnnxRuntimeModel",
                      "parameters": {"uri": "model.onnx"}, "max_batch_size": N, "max_batch_time": SECONDS}
"""

from __future__ import annotations

import os

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        uri = await get_model_uri(self._settings)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {inp.name: NumpyCodec.decode_input(inp) for inp in payload.inputs}
        wanted = [o.name for o in payload.outputs] if payload.outputs else self._outputs
        results = self._session.run(wanted, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(name, array) for name, array in zip(wanted, results, strict=True)
            ],
        )
