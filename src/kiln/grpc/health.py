"""gRPC health checking (``grpc.health.v1.Health``), as Kubernetes gRPC probes and grpc_health_probe use it:
the server (service ``""``) and Triton's ``inference.GRPCInferenceService`` are SERVING while the core is ready
(the same readiness as HTTP ``/v2/health/ready``), NOT_SERVING otherwise; any other service is NOT_FOUND."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kiln.core import Core

SERVICES = ("", "inference.GRPCInferenceService")
_WATCH_POLL_S = 1.0


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, core: Core) -> None:
        self.core = core

    def _status(self) -> int:
        if self.core.is_live() and self.core.is_ready():
            return health_pb2.HealthCheckResponse.SERVING
        return health_pb2.HealthCheckResponse.NOT_SERVING

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.service not in SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{request.service}'")
        return health_pb2.HealthCheckResponse(status=self._status())

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """The status now, then each change (checked every second) until the client goes away."""
        if request.service not in SERVICES:
            yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
            return
        last = None
        while True:
            status = self._status()
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(_WATCH_POLL_S)


def add_health(server: grpc.aio.Server, core: Core) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(core), server)
