"""The build test models are valid ONNX and run."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from build_models import conv_net, mlp, transformer_block


def test_models_check_and_run() -> None:
    rng = np.random.default_rng(0)
    cases = [
        (conv_net(), {"x": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)}, (2, 10)),
        (mlp(), {"features": rng.standard_normal((3, 32)).astype(np.float32)}, (3, 8)),
        (transformer_block(), {"hidden": rng.standard_normal((2, 5, 32)).astype(np.float32)}, (2, 5, 32)),
    ]
    for model, feeds, shape in cases:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, feeds)
        assert out.shape == shape
        assert np.isfinite(out).all()
