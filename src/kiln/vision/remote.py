"""The client side of the examples: one small wrapper over ``tritonclient`` HTTP and gRPC."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PROTOCOLS = ("http", "grpc")
DEFAULT_URLS = {"http": "127.0.0.1:8000", "grpc": "127.0.0.1:8001"}


class Remote:
    """A model server reached with ``tritonclient`` over ``protocol`` (``http`` or ``grpc``)."""

    def __init__(self, url: str | None = None, protocol: str = "http") -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module  # type: ignore[no-redef]
        self.protocol = protocol
        self.url = url or DEFAULT_URLS[protocol]
        self.module: Any = module
        self.client: Any = module.InferenceServerClient(self.url)

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        class_count: int = 0,
        parameters: Mapping[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs`` (FP32 arrays, or object arrays of bytes sent as BYTES); returns the named
        ``outputs`` (top-``class_count`` ``score:index:label`` strings through the classification extension
        when ``class_count > 0``). ``parameters``: the request's own (an ensemble hands them to its steps)."""
        tensors = []
        for name, array in inputs.items():
            if array.dtype == np.object_:
                tensor = self.module.InferInput(name, list(array.shape), "BYTES")
                tensor.set_data_from_numpy(array)
            else:
                tensor = self.module.InferInput(name, list(array.shape), "FP32")
                tensor.set_data_from_numpy(np.ascontiguousarray(array, np.float32))
            tensors.append(tensor)
        requested = [self.module.InferRequestedOutput(n, class_count=class_count) for n in outputs]
        result = self.client.infer(
            model, tensors, outputs=requested, parameters=dict(parameters or {}) or None
        )
        return {n: result.as_numpy(n) for n in outputs}

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
