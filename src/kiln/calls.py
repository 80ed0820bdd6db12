"""Model-to-model calls: the ``infer`` callable the composition root hands to backends, going through the core."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING

from kiln.config.schema import model_config_pb2
from kiln.errors import InternalError, KilnError, UnavailableError
from kiln.types import InferRequest, InferResponse

if TYPE_CHECKING:
    from kiln.core import Core


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
        loop = self._loop_for_sync()
        return asyncio.run_coroutine_threadsafe(self.core.infer(request), loop).result()

    # the repository API for models (pb_utils.load_model / unload_model / is_model_ready), from worker threads
    def load_sync(self, name: str, parameters: Mapping[str, object]) -> None:
        asyncio.run_coroutine_threadsafe(
            self.core.load_model(name, parameters), self._loop_for_sync()
        ).result()

    def unload_sync(self, name: str, parameters: Mapping[str, object]) -> None:
        asyncio.run_coroutine_threadsafe(
            self.core.unload_model(name, parameters), self._loop_for_sync()
        ).result()

    def ready_sync(self, name: str, version: str = "") -> bool:
        try:
            return self.core.model_ready(name, version)
        except KilnError:
            return False

    def config_sync(self, name: str, version: str = "") -> model_config_pb2.ModelConfig:
        return self.core.model_config(name, version)

    def stream_sync(self, request: InferRequest) -> Iterator[InferResponse]:
        """Responses as they come, to a worker thread (a thread-safe queue between the loop and the caller)."""
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
            while (item := responses.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not future.done():
                request.cancellation.cancel()
                future.cancel()
