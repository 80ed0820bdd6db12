"""grpc.health.v1 on a real server, as Kubernetes gRPC probes call it: SERVING while ready, NOT_SERVING when a
model is not (strict readiness), NOT_FOUND for an unknown service."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kiln.examples import models, write_model
from servers import KilnProcess


def _check(url: str, service: str = "") -> int:
    with grpc.insecure_channel(url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_follows_readiness(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "good", models.add_sub(["batch", 4]), None)
    with KilnProcess(
        [repo], "--model-control-mode", "explicit", "--load-model", "good", log_dir=tmp_path
    ) as proc:
        assert _check(proc.grpc_url) == health_pb2.HealthCheckResponse.SERVING
        assert (
            _check(proc.grpc_url, "inference.GRPCInferenceService") == health_pb2.HealthCheckResponse.SERVING
        )
        with pytest.raises(grpc.RpcError) as err:
            _check(proc.grpc_url, "no.such.Service")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        (repo / "bad" / "1").mkdir(parents=True)
        (repo / "bad" / "1" / "model.onnx").write_bytes(b"not onnx")
        import tritonclient.http as httpclient

        with pytest.raises(Exception):  # noqa: B017 - the load fails; the server keeps serving
            httpclient.InferenceServerClient(proc.http_url).load_model("bad")
        assert _check(proc.grpc_url) == health_pb2.HealthCheckResponse.NOT_SERVING  # strict readiness
