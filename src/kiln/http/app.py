"""The HTTP/REST transport: thin endpoints over the core, one error mapping."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kiln.config import config_to_dict
from kiln.core import Core
from kiln.errors import InvalidArgumentError, NotFoundError
from kiln.http import codec
from kiln.http.errors import error_payload
from kiln.http.infer import ASGIApp, InferEndpoint, with_fast_infer
from kiln.http.infer import read_body as read_asgi_body
from kiln.restricted import NO_RESTRICTIONS, Restrictions
from kiln.shm import refuse_cuda
from kiln.tracing.context import with_incoming_context

log = logging.getLogger(__name__)

JSON = "application/json"
T = TypeVar("T")


@dataclass(frozen=True)
class HttpOptions:
    max_input_bytes: int = 64 * 1024 * 1024  # like Triton's --http-max-input-size default
    max_upload_bytes: int = 256 * 1024 * 1024  # model files sent with a load request
    restrictions: Restrictions = NO_RESTRICTIONS


def json_response(doc: object, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=JSON)


def error_response(exc: Exception) -> Response:
    status, doc = error_payload(exc)
    return json_response(doc, status)


Handler = Callable[[Request], Awaitable[Response]]


def guarded(fn: Handler, api: str, restrictions: Restrictions = NO_RESTRICTIONS) -> Handler:
    """The one error mapping (every failure becomes a status + {"error": ...}), and the API restriction."""

    @functools.wraps(fn)
    async def wrapper(request: Request) -> Response:
        try:
            restrictions.check(api, request.headers.get)
            return await fn(request)
        except Exception as e:
            return error_response(e)

    return wrapper


def _version(request: Request) -> str:
    return request.path_params.get("version", "")


def create_app(core: Core, options: HttpOptions | None = None) -> ASGIApp:
    """The HTTP/REST app: the infer endpoint as plain ASGI (the hot path), the rest on Starlette."""
    options = options or HttpOptions()
    endpoint = InferEndpoint(core, options)

    async def server_metadata(request: Request) -> Response:
        md = core.server_metadata()
        return json_response({"name": md.name, "version": md.version, "extensions": md.extensions})

    async def live(request: Request) -> Response:
        return Response(status_code=200 if core.is_live() else 400)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if core.is_ready() else 400)

    async def model_ready(request: Request) -> Response:
        ok = await core.model_ready_checked(request.path_params["model"], _version(request))
        return Response(status_code=200 if ok else 400)

    async def model_metadata(request: Request) -> Response:
        md = core.model_metadata(request.path_params["model"], _version(request))
        tensors = lambda ts: [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in ts]  # noqa: E731
        return json_response(
            {
                "name": md.name,
                "versions": md.versions,
                "platform": md.platform,
                "inputs": tensors(md.inputs),
                "outputs": tensors(md.outputs),
            }
        )

    async def model_config(request: Request) -> Response:
        return json_response(
            config_to_dict(core.model_config(request.path_params["model"], _version(request)))
        )

    async def repository_index(request: Request) -> Response:
        body = await read_body(request, options.max_input_bytes)
        doc = codec.parse_json(body, "repository index request") if body.strip() else {}
        ready = doc.get("ready", False) if isinstance(doc, dict) else False
        if not isinstance(ready, bool):
            raise InvalidArgumentError("'ready' must be true or false")
        rows = core.index(ready_only=ready)
        return json_response([codec.index_row(r) for r in rows])

    async def statistics(request: Request) -> Response:
        name = request.path_params.get("model", "")
        stats = core.statistics(name, _version(request))
        return json_response({"model_stats": [codec.statistics_to_json(s) for s in stats]})

    async def load(request: Request) -> Response:
        # base64 file contents are 4/3 of their size, plus the JSON around them
        body = await read_body(
            request, max(options.max_input_bytes, options.max_upload_bytes * 4 // 3 + 65536)
        )
        await core.load_model(request.path_params["model"], _parameters(body, "load request"))
        return json_response({})

    async def unload(request: Request) -> Response:
        params = _parameters(await read_body(request, options.max_input_bytes), "unload request")
        await core.unload_model(request.path_params["model"], params)
        return json_response({})

    async def logging_settings(request: Request) -> Response:
        changes = None
        if request.method == "POST":
            body = await read_body(request, options.max_input_bytes)
            doc = codec.parse_json(body, "log settings request") if body.strip() else {}
            if not isinstance(doc, dict):
                raise InvalidArgumentError("a log settings request must be a JSON object")
            changes = doc
        return json_response(core.log_settings(changes))

    async def trace_settings(request: Request) -> Response:
        changes = None
        if request.method == "POST":
            body = await read_body(request, options.max_input_bytes)
            changes = codec.parse_json(body, "trace settings request") if body.strip() else {}
            if not isinstance(changes, dict):
                raise InvalidArgumentError("a trace settings request must be a JSON object")
        return json_response(core.trace_settings(request.path_params.get("model", ""), changes))

    async def shm_status(request: Request) -> Response:
        regions = core.shared_memory.status(request.path_params.get("region", ""))
        return json_response(
            [{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size} for r in regions]
        )

    async def shm_register(request: Request) -> Response:
        doc = codec.parse_json(
            await read_body(request, options.max_input_bytes), "shared memory register request"
        )
        if not isinstance(doc, dict):
            raise InvalidArgumentError("a shared memory register request must be a JSON object")
        for key in ("key", "byte_size"):
            if key not in doc:
                raise InvalidArgumentError(f"Shared memory register request has no '{key}' field")
        name = request.path_params["region"]
        core.shared_memory.register(name, doc["key"], doc.get("offset", 0), doc["byte_size"])
        return json_response({})

    async def shm_unregister(request: Request) -> Response:
        core.shared_memory.unregister(request.path_params.get("region", ""))
        return json_response({})

    async def cuda_status(request: Request) -> Response:
        if request.path_params.get("region"):
            raise NotFoundError(
                f"Unable to find cuda shared memory region: '{request.path_params['region']}'"
            )
        return json_response([])  # no GPU: none registered

    async def cuda_register(request: Request) -> Response:
        refuse_cuda()

    async def cuda_unregister(request: Request) -> Response:
        return json_response({})  # nothing registered: nothing to do

    def guard(fn: Handler, api: str) -> Handler:
        return guarded(fn, api, options.restrictions)

    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    routes = [
        # POSTs never reach these (with_fast_infer answers them first); other methods get Starlette's 405
        Route(model + "/infer", endpoint, methods=["POST"]),
        Route(versioned + "/infer", endpoint, methods=["POST"]),
        Route("/v2", guard(server_metadata, "metadata"), methods=["GET"]),
        Route("/v2/health/live", guard(live, "health"), methods=["GET"]),
        Route("/v2/health/ready", guard(ready, "health"), methods=["GET"]),
        Route("/v2/models/stats", guard(statistics, "statistics"), methods=["GET"]),
        Route("/v2/repository/index", guard(repository_index, "model-repository"), methods=["POST"]),
        Route("/v2/logging", guard(logging_settings, "logging"), methods=["GET", "POST"]),
        Route("/v2/trace/setting", guard(trace_settings, "trace"), methods=["GET", "POST"]),
        Route(model + "/trace/setting", guard(trace_settings, "trace"), methods=["GET", "POST"]),
        Route("/v2/repository/models/{model}/load", guard(load, "model-repository"), methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", guard(unload, "model-repository"), methods=["POST"]),
    ]
    for kind, (status, register, unregister) in {
        "system": (shm_status, shm_register, shm_unregister),
        "cuda": (cuda_status, cuda_register, cuda_unregister),
    }.items():
        base = f"/v2/{kind}sharedmemory"
        routes += [
            Route(base + "/status", guard(status, "shared-memory"), methods=["GET"]),
            Route(base + "/region/{region}/status", guard(status, "shared-memory"), methods=["GET"]),
            Route(base + "/region/{region}/register", guard(register, "shared-memory"), methods=["POST"]),
            Route(base + "/unregister", guard(unregister, "shared-memory"), methods=["POST"]),
            Route(base + "/region/{region}/unregister", guard(unregister, "shared-memory"), methods=["POST"]),
        ]
    for prefix in (model, versioned):
        routes += [
            Route(prefix, guard(model_metadata, "metadata"), methods=["GET"]),
            Route(prefix + "/ready", guard(model_ready, "health"), methods=["GET"]),
            Route(prefix + "/config", guard(model_config, "model-config"), methods=["GET"]),
            Route(prefix + "/stats", guard(statistics, "statistics"), methods=["GET"]),
        ]
    app = Starlette(routes=routes)
    app.add_exception_handler(404, _not_found)
    app.add_exception_handler(405, _not_allowed)
    served = with_fast_infer(app, endpoint)
    return with_incoming_context(served) if core.tracing and core.tracing.propagates else served


def _parameters(body: bytes, what: str) -> dict[str, Any]:
    doc = codec.parse_json(body, what) if body.strip() else {}
    if not isinstance(doc, dict):
        raise InvalidArgumentError(f"{what} must be a JSON object")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidArgumentError(f"{what}: 'parameters' must be a JSON object")
    return params


async def _not_found(request: Request, exc: Exception) -> Response:
    return json_response({"error": f"no such endpoint: {request.method} {request.url.path}"}, 404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return json_response({"error": f"method {request.method} is not allowed on {request.url.path}"}, 405)


async def read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing more than ``limit`` bytes before buffering them."""
    return await read_asgi_body(request.receive, request.headers.get("content-length"), limit)
