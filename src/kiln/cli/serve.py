"""``kiln serve``: Triton's flag names where they apply."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kiln.tls import TlsOptions

log = logging.getLogger("kiln.cli")


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")


def _optional_path(value: str) -> Path | None:
    """A file flag; an empty value means not given (Triton's default), so templates can pass ''."""
    return Path(value) if value else None


def _add_tls_flags(p: argparse.ArgumentParser) -> None:
    """Triton's --grpc-use-ssl family, and the same names for HTTP (docs/tls.md)."""
    for transport, server in (("grpc", "gRPC"), ("http", "HTTP")):
        p.add_argument(
            f"--{transport}-use-ssl",
            type=_bool,
            nargs="?",
            const=True,
            default=False,
            metavar="BOOL",
            help=f"serve {server} over TLS with --{transport}-server-cert and --{transport}-server-key",
        )
        p.add_argument(
            f"--{transport}-server-cert",
            type=_optional_path,
            metavar="PEM",
            help="the server's certificate (then any intermediates)",
        )
        p.add_argument(
            f"--{transport}-server-key",
            type=_optional_path,
            metavar="PEM",
            help="its private key, unencrypted",
        )
        p.add_argument(
            f"--{transport}-root-cert",
            type=_optional_path,
            metavar="PEM",
            help=f"the CA certificate(s) client certificates must chain to (with --{transport}-use-ssl-mutual)",
        )
        p.add_argument(
            f"--{transport}-use-ssl-mutual",
            type=_bool,
            nargs="?",
            const=True,
            default=False,
            metavar="BOOL",
            help=f"also require a client certificate signed by --{transport}-root-cert (implies "
            f"--{transport}-use-ssl)",
        )


def tls_options(args: argparse.Namespace, transport: str) -> TlsOptions:
    """The TlsOptions of ``transport`` ("grpc" or "http") from the parsed flags."""
    from kiln.tls import TlsOptions

    def value(name: str) -> Any:
        return getattr(args, f"{transport}_{name}")

    return TlsOptions(
        use_ssl=value("use_ssl"),
        server_cert=value("server_cert"),
        server_key=value("server_key"),
        root_cert=value("root_cert"),
        use_ssl_mutual=value("use_ssl_mutual"),
    )


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a Triton-layout model repository over KServe V2 HTTP and gRPC",
        description="Serve every model of a Triton-layout model repository over KServe V2 HTTP/REST and gRPC. "
        "With no --model-repository, serves the bundled example repository.",
    )
    p.add_argument(
        "--model-repository",
        "--model-store",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="model repository directory (repeatable)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)"
    )
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--allow-http", type=_bool, default=True, metavar="BOOL")
    p.add_argument("--allow-grpc", type=_bool, default=True, metavar="BOOL")
    p.add_argument("--allow-metrics", type=_bool, default=True, metavar="BOOL")
    p.add_argument(
        "--exit-on-error",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="exit if any model fails to load (default false: failed models are reported, the rest serve)",
    )
    p.add_argument(
        "--cache-config",
        action="append",
        default=[],
        metavar="local,size=BYTES",
        help="the response cache (Triton's form): models with response_cache { enable: true } answer repeated "
        "requests from it",
    )
    p.add_argument(
        "--server-name",
        default="triton",
        metavar="NAME",
        help="the name server metadata answers (default 'triton', as Triton's clients expect; the version is "
        "Kiln's own)",
    )
    p.add_argument(
        "--strict-readiness",
        type=_bool,
        default=True,
        metavar="BOOL",
        help="server is ready only when every model is ready (default true, as Triton)",
    )
    p.add_argument(
        "--disable-auto-complete-config",
        action="store_true",
        help="do not fill missing config fields from the model file",
    )
    p.add_argument(
        "--default-max-batch-size",
        type=int,
        default=4,
        help="max_batch_size given to auto-completed models that can batch (default 4, as Triton)",
    )
    p.add_argument(
        "--http-max-input-size",
        type=int,
        default=64 * 1024 * 1024,
        metavar="BYTES",
        help="largest HTTP request body, after decompression (default 64 MiB)",
    )
    p.add_argument(
        "--grpc-max-message-size",
        type=int,
        default=2**31 - 1,
        metavar="BYTES",
        help="largest gRPC message sent or received (default 2 GiB - 1)",
    )
    p.add_argument(
        "--model-control-mode",
        choices=["none", "poll", "explicit"],
        default="none",
        help="none: load everything at start; poll: also apply repository changes every "
        "--repository-poll-secs; explicit: load only --load-model and what the repository API asks",
    )
    p.add_argument("--repository-poll-secs", type=float, default=15.0, metavar="SECONDS")
    p.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="explicit mode: model to load at start (repeatable; '*' loads all)",
    )
    p.add_argument(
        "--model-upload-max-size",
        type=int,
        default=256 * 1024 * 1024,
        metavar="BYTES",
        help="largest total size of model files sent with a load request (default 256 MiB)",
    )
    p.add_argument(
        "--http-restricted-api",
        action="append",
        default=[],
        metavar="API[,API...]:KEY=VALUE",
        help="only requests carrying header KEY: VALUE may use these HTTP APIs, e.g. "
        "model-repository:admin-key=secret (APIs: health, metadata, inference, model-config, "
        "model-repository, statistics)",
    )
    p.add_argument(
        "--grpc-restricted-protocol",
        action="append",
        default=[],
        metavar="API[,API...]:KEY=VALUE",
        help="the same for gRPC, with KEY as request metadata",
    )
    p.add_argument(
        "--metrics-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="summary_latencies=true (Triton's latency summaries with quantiles), "
        "summary_quantiles=0.5:0.05,0.99:0.001, summary_max_age=SECONDS, histogram_latencies=true",
    )
    p.add_argument(
        "--exit-timeout-secs", type=float, default=30.0, help="how long shutdown waits for in-flight requests"
    )
    p.add_argument(
        "--log-verbose",
        type=int,
        nargs="?",
        const=1,
        default=0,
        metavar="LEVEL",
        help="verbose logging (1 or more): debug messages and one line per inference request",
    )
    p.add_argument("--log-file", default="", metavar="PATH", help="write the log there instead of stderr")
    for level in ("info", "warning", "error"):
        p.add_argument(
            f"--log-{level}",
            type=_bool,
            default=True,
            metavar="BOOL",
            help=f"write {level} messages (default true)",
        )
    p.add_argument(
        "--log-format",
        choices=("default", "ISO8601", "json"),
        default="default",
        help="log line format: default, ISO8601 (UTC timestamps), json (Kiln's: one object a line)",
    )
    p.add_argument(
        "--backend",
        action="append",
        default=[],
        metavar="NAME=MODULE:CLASS",
        help="Kiln extension: serve models whose config says backend: NAME with your own Backend subclass "
        "(MODULE importable on PYTHONPATH); repeatable",
    )
    p.add_argument(
        "--trace-config",
        action="append",
        default=[],
        metavar="[MODE,]SETTING=VALUE",
        help="tracing, as Triton: level=TIMESTAMPS, rate=N, count=N, mode=triton|opentelemetry, "
        "triton,file=PATH, triton,log-frequency=N, opentelemetry,url=URL, opentelemetry,resource=KEY=VALUE "
        "(repeatable; docs/tracing.md)",
    )
    _add_tls_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kiln.cli.common import configure_logging
    from kiln.logsettings import LogSettings
    from kiln.server import ServerOptions
    from kiln.server import run as run_server

    configure_logging(args.log_verbose)
    repositories = list(args.model_repository)
    if not repositories:
        from kiln.examples import default_repository

        repositories = [default_repository()]
        log.info("no --model-repository given: serving the example repository at %s", repositories[0])
    options = ServerOptions(
        model_repositories=repositories,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        allow_http=args.allow_http,
        allow_grpc=args.allow_grpc,
        allow_metrics=args.allow_metrics,
        exit_on_error=args.exit_on_error,
        strict_readiness=args.strict_readiness,
        server_name=args.server_name,
        cache_config=list(args.cache_config),
        log=LogSettings(
            log_file=args.log_file,
            log_info=args.log_info,
            log_warning=args.log_warning,
            log_error=args.log_error,
            log_verbose_level=args.log_verbose,
            log_format=args.log_format,
        ),
        auto_complete=not args.disable_auto_complete_config,
        default_max_batch_size=args.default_max_batch_size,
        http_max_input_bytes=args.http_max_input_size,
        grpc_max_message_bytes=args.grpc_max_message_size,
        shutdown_timeout_s=args.exit_timeout_secs,
        metrics_config=list(args.metrics_config),
        model_control_mode=args.model_control_mode,
        repository_poll_secs=args.repository_poll_secs,
        load_models=list(args.load_model),
        model_upload_max_bytes=args.model_upload_max_size,
        http_restricted_api=list(args.http_restricted_api),
        grpc_restricted_protocol=list(args.grpc_restricted_protocol),
        backends=list(args.backend),
        http_tls=tls_options(args, "http"),
        grpc_tls=tls_options(args, "grpc"),
        trace_config=list(args.trace_config),
    )
    return run_server(options)
