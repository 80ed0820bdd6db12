"""Composition root: options -> repository -> core -> HTTP / gRPC / metrics servers, signals, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import uvicorn
from tritonclient.grpc import service_pb2_grpc

from kiln.backends import Backend, BackendSpec, register_backend
from kiln.cache import CacheOptions
from kiln.core import Core, CoreOptions
from kiln.errors import KilnError
from kiln.grpc.health import add_health
from kiln.grpc.servicer import InferenceServicer
from kiln.http.app import HttpOptions, create_app
from kiln.lifecycle import ControlMode, LifecycleOptions, ModelState
from kiln.logsettings import LogControl, LogSettings
from kiln.repository import ModelRepository
from kiln.restricted import Restrictions
from kiln.stats.custom import CustomMetrics
from kiln.stats.exposition import metrics_app
from kiln.stats.latency import LatencyOptions
from kiln.stats.prometheus import build_registry
from kiln.tls import ServerTls, TlsOptions, load_tls
from kiln.tracing import TraceConfig, TraceManager

log = logging.getLogger("kiln.server")


@dataclass
class ServerOptions:
    model_repositories: list[Path] = field(default_factory=list)
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    allow_http: bool = True
    allow_grpc: bool = True
    allow_metrics: bool = True
    exit_on_error: bool = False
    strict_readiness: bool = True
    server_name: str = "triton"  # what server metadata answers as its name (Triton's clients check it)
    auto_complete: bool = True
    default_max_batch_size: int = 4
    http_max_input_bytes: int = 64 * 1024 * 1024
    grpc_max_message_bytes: int = 2**31 - 1
    shutdown_timeout_s: float = 30.0
    metrics_config: list[str] = field(default_factory=list)
    model_control_mode: str = "none"
    repository_poll_secs: float = 15.0
    load_models: list[str] = field(default_factory=list)
    model_upload_max_bytes: int = 256 * 1024 * 1024
    http_restricted_api: list[str] = field(default_factory=list)
    grpc_restricted_protocol: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)  # NAME=MODULE:CLASS, registered before models load
    cache_config: list[str] = field(default_factory=list)  # --cache-config local,size=BYTES
    # --trace-config [MODE,]SETTING=VALUE (kiln.tracing)
    trace_config: list[str] = field(default_factory=list)
    log: LogSettings = field(
        default_factory=LogSettings
    )  # levels, format, file (the logging extension changes them)
    # --http-use-ssl, --grpc-use-ssl and the rest (kiln.tls); the metrics port stays plain HTTP
    http_tls: TlsOptions = field(default_factory=TlsOptions)
    grpc_tls: TlsOptions = field(default_factory=TlsOptions)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the composition root owns signals for every server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        closer = asyncio.create_task(self._drop_finished_tls()) if self.config.ssl is not None else None
        try:
            await super().shutdown(sockets)
        finally:
            if closer is not None:
                closer.cancel()

    async def _drop_finished_tls(self, grace_s: float = 1.0) -> None:
        """A closing TLS connection waits for the client's close_notify (up to asyncio's 30 s SSL shutdown
        timeout), which a client idling on a keep-alive connection never sends: drain would last that long.
        A connection closing for ``grace_s`` with nothing left to write is dropped instead."""
        loop = asyncio.get_running_loop()
        closing_since: dict[int, float] = {}
        while True:
            await asyncio.sleep(grace_s / 4)
            for connection in list(self.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is None or not transport.is_closing() or transport.get_write_buffer_size():
                    continue
                since = closing_since.setdefault(id(connection), loop.time())
                if loop.time() - since >= grace_s:
                    transport.abort()


class StartupError(KilnError):
    """The server cannot start (a port in use, a model that failed with --exit-on-error, ...)."""


@dataclass(frozen=True)
class _Checked:
    """What serve() makes of the flags before any model loads, for the servers it starts later."""

    http_restrictions: Restrictions
    grpc_restrictions: Restrictions
    http_tls: ServerTls | None
    grpc_tls: ServerTls | None

    @classmethod
    def of(cls, options: ServerOptions) -> _Checked:
        for name, allowed, tls in (
            ("http", options.allow_http, options.http_tls),
            ("grpc", options.allow_grpc, options.grpc_tls),
        ):
            if tls.enabled and not allowed:
                log.warning("--%s-use-ssl has no effect: --allow-%s is false", name, name)
        return cls(
            http_restrictions=Restrictions.parse(options.http_restricted_api, "--http-restricted-api"),
            grpc_restrictions=Restrictions.parse(
                options.grpc_restricted_protocol, "--grpc-restricted-protocol"
            ),
            http_tls=load_tls(options.http_tls, "http"),
            grpc_tls=load_tls(options.grpc_tls, "grpc"),
        )


async def serve(options: ServerOptions, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set or SIGTERM/SIGINT arrives; then stop accepting and drain."""
    stop = stop or asyncio.Event()
    # every flag that can be wrong is parsed before any model is loaded: a typo fails at once
    checked = _Checked.of(options)
    log_control = LogControl(options.log)
    latency = LatencyOptions.parse(options.metrics_config)
    cache = CacheOptions.parse(options.cache_config)
    tracing = TraceManager(TraceConfig.parse(options.trace_config))
    for spec in options.backends:
        register_backend_flag(spec)
    repository = ModelRepository(options.model_repositories)
    custom_metrics = CustomMetrics()  # families models register (pb_utils.MetricFamily), exported on /metrics
    core = Core(
        repository,
        CoreOptions(
            cache=cache,
            strict_readiness=options.strict_readiness,
            server_name=options.server_name,
            lifecycle=LifecycleOptions(
                mode=ControlMode(options.model_control_mode),
                startup_models=tuple(options.load_models),
                poll_interval_s=options.repository_poll_secs,
                auto_complete=options.auto_complete,
                default_max_batch_size=options.default_max_batch_size,
                latency=latency,
                max_upload_bytes=options.model_upload_max_bytes,
                custom_metrics=custom_metrics,
                response_cache=cache is not None,
            ),
        ),
    )
    core.log_control = log_control
    tracing.attach(core)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    # every port first: a busy one is one clear line before any model loads (and before gRPC's own log)
    sockets = _bind_ports(options)
    try:
        await core.start()
        failed = core.failed_models()
        if failed and options.exit_on_error:
            names = ", ".join(f"{e.name} ({e.reason or 'version failed'})" for e in failed)
            raise StartupError(f"models failed to load and --exit-on-error is set: {names}")
        await _run_servers(core, options, stop, checked, sockets)
    finally:
        for sock in sockets.values():
            sock.close()
        await core.close()


def _bind_ports(options: ServerOptions) -> dict[str, socket.socket]:
    """Listening sockets for HTTP and metrics (handed to uvicorn later); the gRPC port is only checked here (gRPC
    binds its own): a busy port is a StartupError naming it."""
    enabled = [
        (what, port)
        for what, on, port in (
            ("HTTP", options.allow_http, options.http_port),
            ("gRPC", options.allow_grpc, options.grpc_port),
            ("metrics", options.allow_metrics, options.metrics_port),
        )
        if on and port != 0
    ]
    for i, (what, port) in enumerate(enabled):
        for other, other_port in enabled[i + 1 :]:
            if port == other_port:
                # two unlistened sockets with SO_REUSEADDR may share a port: without this check both would bind
                raise StartupError(f"the {what} and {other} servers cannot share port {port}")
    sockets: dict[str, socket.socket] = {}
    try:
        if options.allow_http:
            sockets["http"] = bind_socket(options.host, options.http_port, "HTTP")
        if options.allow_metrics:
            sockets["metrics"] = bind_socket(options.host, options.metrics_port, "metrics")
        if options.allow_grpc:
            bind_socket(options.host, options.grpc_port, "gRPC").close()
    except BaseException:
        for sock in sockets.values():
            sock.close()
        raise
    return sockets


async def _run_servers(
    core: Core,
    options: ServerOptions,
    stop: asyncio.Event,
    checked: _Checked,
    sockets: dict[str, socket.socket],
) -> None:
    grpc_server = None
    servers: list[_Uvicorn] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        if options.allow_grpc:
            grpc_server = _grpc_server(core, options, checked.grpc_restrictions)
            await _start_grpc(grpc_server, options, checked.grpc_tls)
        if options.allow_http:
            servers.append(_http_server(core, options, checked))
            tasks.append(asyncio.create_task(servers[-1].serve(sockets=[sockets["http"]])))
            where = f"{options.host}:{options.http_port}"
            if checked.http_tls is None:
                log.info("HTTP server listening on %s", where)
            else:
                log.info("HTTP server listening on https://%s (%s)", where, checked.http_tls.describe())
        if options.allow_metrics:
            servers.append(_metrics_server(core))
            tasks.append(asyncio.create_task(servers[-1].serve(sockets=[sockets["metrics"]])))
            log.info("metrics server listening on %s:%d/metrics", options.host, options.metrics_port)
        entries = core.manager.loaded()
        ready = sum(1 for e in entries if e.state is ModelState.READY)
        log.info(
            "Kiln is serving %d model(s): %d ready, %d failed to load",
            len(entries),
            ready,
            len(entries) - ready,
        )
        await stop.wait()
        log.info("shutting down: no new requests, draining in-flight ones")
    finally:
        core.live = False
        for server in servers:
            server.should_exit = True
        if grpc_server is not None:
            await grpc_server.stop(options.shutdown_timeout_s)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _grpc_server(core: Core, options: ServerOptions, restrictions: Restrictions) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", options.grpc_max_message_bytes),
            ("grpc.max_receive_message_length", options.grpc_max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core, restrictions), server)
    add_health(server, core)  # grpc.health.v1, for Kubernetes gRPC probes (over TLS too: the same port)
    return server


async def _start_grpc(server: grpc.aio.Server, options: ServerOptions, tls: ServerTls | None) -> None:
    address = f"{options.host}:{options.grpc_port}"
    try:
        if tls is None:
            server.add_insecure_port(address)
        else:
            server.add_secure_port(address, tls.grpc_credentials())
    except RuntimeError as e:
        raise StartupError(f"cannot listen for gRPC on {address}: {e}") from None
    await server.start()
    if tls is None:
        log.info("gRPC server listening on %s", address)
    else:
        log.info("gRPC server listening on %s (%s)", address, tls.describe())


def _http_server(core: Core, options: ServerOptions, checked: _Checked) -> _Uvicorn:
    http_options = HttpOptions(
        max_input_bytes=options.http_max_input_bytes,
        max_upload_bytes=options.model_upload_max_bytes,
        restrictions=checked.http_restrictions,
    )
    tls = checked.http_tls
    config = uvicorn.Config(
        create_app(core, http_options),
        host=options.host,
        port=options.http_port,
        lifespan="off",
        access_log=False,
        log_level="warning",
        http="httptools",
        timeout_graceful_shutdown=int(options.shutdown_timeout_s),
        # the context load_tls built and checked, used as it is
        ssl_context_factory=None if tls is None else lambda _config, _default: tls.context,
    )
    return _Uvicorn(config)


def _metrics_server(core: Core) -> _Uvicorn:
    """Plain HTTP even when the other ports use TLS: Prometheus scrapes it as Triton's (docs/tls.md)."""
    registry = build_registry(core.all_stats, core.options.lifecycle.custom_metrics)
    config = uvicorn.Config(
        metrics_app(registry), lifespan="off", access_log=False, log_level="warning", http="httptools"
    )
    return _Uvicorn(config)


def register_backend_flag(spec: str) -> None:
    """``--backend NAME=MODULE:CLASS``: checked (the class must import and be a Backend) before models load."""
    name, sep, target = spec.partition("=")
    module, colon, cls = target.partition(":")
    if not sep or not colon or not name or not module or not cls:
        raise StartupError(f"--backend {spec!r}: expected NAME=MODULE:CLASS")
    try:
        klass = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise StartupError(f"--backend {spec!r}: cannot import {module}:{cls}: {e}") from None
    if not (isinstance(klass, type) and issubclass(klass, Backend)):
        raise StartupError(f"--backend {spec!r}: {module}:{cls} is not a kiln.backends.Backend subclass")
    register_backend(name, BackendSpec(module, cls))


def bind_socket(host: str, port: int, what: str) -> socket.socket:
    """Bind a listening socket ourselves, so a busy port is a clear startup error (not a sys.exit deep inside)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot listen for {what} on {host}:{port}: {e.strerror}") from None
    return sock


def run(options: ServerOptions) -> int:
    """Blocking entry point for the CLI: returns the process exit code."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        runner = asyncio.run
    try:
        runner(serve(options))
    except KilnError as e:
        log.error("%s", e.message)
        return 1
    return 0
