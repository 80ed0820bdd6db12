"""Model-to-model calls: the ``infer`` callable the composition root hands to backends, going through the core."""

from __future__ import annotations

import asyncio
import contextvars
import queue
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from kiln import bridge
from kiln.config.schema import model_config_pb2
from kiln.errors import InternalError, KilnError, UnavailableError
from kiln.types import InferRequest, InferResponse

if TYPE_CHECKING:
    from kiln.core import Core

T = TypeVar("T")


class CoreCaller:
    """The ``infer`` callable the composition root hands to backends (BLS, ensembles): model-to-model calls go
    through the core, so the callee's scheduling, batching, statistics and metrics apply."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.loop: asyncio.AbstractEventLoop | None = None

    async def infer(self, request: InferRequest) -> InferResponse:
        return await self.core.infer(request)

    def stream(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        return self.core.stream(request)

    def _loop_for_sync(self) -> asyncio.AbstractEventLoop:
        loop = self.loop
        if loop is None or loop.is_closed():
            raise UnavailableError("the server is not running")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise InternalError("a blocking model call was made on the event loop; use the async call")
        return loop

    def infer_sync(self, request: InferRequest) -> InferResponse:
        return self._block(self.core.infer, request)

    # the repository API for models (pb_utils.load_model / unload_model / is_model_ready), from blocking code
    def load_sync(self, name: str, parameters: Mapping[str, object]) -> None:
        self._block(self.core.load_model, name, parameters)

    def unload_sync(self, name: str, parameters: Mapping[str, object]) -> None:
        self._block(self.core.unload_model, name, parameters)

    def _block(self, call: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """A core call's result, for blocking code: awaited by the loop from a bridge greenlet (a model executing
        on the loop), or waited for by a worker thread."""
        if bridge.inside():
            return bridge.wait(self._in_context(call(*args)))
        loop = self._loop_for_sync()
        return bridge.result(asyncio.run_coroutine_threadsafe(call(*args), loop))

    def _in_context(self, coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """In a bridge greenlet: the call, run in the greenlet's context where a trace may be set (as
        ``run_coroutine_threadsafe`` carries a thread's); with tracing off, awaited as it is."""
        if self.core.tracer is None:
            return coro
        return asyncio.get_running_loop().create_task(coro, context=contextvars.copy_context())

    def ready_sync(self, name: str, version: str = "") -> bool:
        try:
            return self.core.model_ready(name, version)
        except KilnError:
            return False

    def config_sync(self, name: str, version: str = "") -> model_config_pb2.ModelConfig:
        return self.core.model_config(name, version)

    def stream_sync(self, request: InferRequest) -> Iterator[InferResponse]:
        """Responses as they come, to blocking code: from a bridge greenlet, each awaited by the loop; to a worker
        thread, through a thread-safe queue between the loop and the caller."""
        if bridge.inside():
            yield from self._stream_bridged(request)
            return
        loop = self._loop_for_sync()
        responses: queue.SimpleQueue[InferResponse | BaseException | None] = queue.SimpleQueue()

        async def pump() -> None:
            try:
                async for response in self.core.stream(request):
                    responses.put(response)
            except BaseException as e:  # delivered to the calling thread
                responses.put(e)
            finally:
                responses.put(None)

        future = asyncio.run_coroutine_threadsafe(pump(), loop)
        try:
            while (item := bridge.get(responses)) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not future.done():
                request.cancellation.cancel()
                future.cancel()

    def _stream_bridged(self, request: InferRequest) -> Iterator[InferResponse]:
        stream = aiter(self.core.stream(request))
        context = None if self.core.tracer is None else contextvars.copy_context()

        async def step() -> InferResponse:
            return await anext(stream)

        done = False
        try:
            while True:
                try:
                    if context is None:
                        item = bridge.wait(anext(stream))
                    else:
                        item = bridge.wait(asyncio.get_running_loop().create_task(step(), context=context))
                except StopAsyncIteration:
                    done = True
                    return
                yield item
        finally:
            if not done:
                request.cancellation.cancel()
                close = getattr(stream, "aclose", None)
                if close is not None and bridge.inside():
                    bridge.wait(close())
