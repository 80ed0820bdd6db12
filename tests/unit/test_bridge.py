"""kiln.bridge: blocking code run on the event loop in a greenlet, its waits switching to the loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from kiln import bridge
from kiln.errors import UnavailableError


async def _later(value: int, seconds: float = 0.02) -> int:
    await asyncio.sleep(seconds)
    return value


def test_a_wait_switches_to_the_loop_and_back_with_the_answer() -> None:
    ticks: list[int] = []

    async def main() -> tuple[object, int, int, int]:
        async def ticker() -> None:  # runs while the bridged code waits: the loop is not blocked
            for i in range(3):
                ticks.append(i)
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())

        def blocking(x: int) -> tuple[bool, int]:
            return bridge.inside(), bridge.wait(_later(x + 1)) + bridge.wait(_later(x + 2))

        result = await bridge.run(blocking, 10, cpu=True)
        await task
        return result

    (inside, total), wall, busy, cpu = asyncio.run(main())
    assert inside and total == 23
    assert ticks == [0, 1, 2]
    assert wall >= 40_000_000 > busy  # the two 20 ms waits are not the code's own time
    assert 0 < cpu <= busy + 1_000_000
    assert not bridge.inside()


def test_the_awaited_call_s_error_is_raised_where_the_code_waits() -> None:
    async def failing() -> None:
        raise ValueError("callee failed")

    def blocking() -> str:
        try:
            bridge.wait(failing())
        except ValueError as e:
            return f"caught {e}"
        return "not raised"

    assert asyncio.run(bridge.run(blocking))[0] == "caught callee failed"

    def uncaught() -> None:
        bridge.wait(failing())

    with pytest.raises(ValueError, match="callee failed"):
        asyncio.run(bridge.run(uncaught))


def test_wait_outside_a_bridge_is_an_error() -> None:
    coro = _later(1)
    with pytest.raises(RuntimeError, match="outside a bridge greenlet"):
        bridge.wait(coro)
    coro.close()


def test_waits_from_threads_other_than_an_execute_s_are_counted() -> None:
    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()

        def call() -> int:
            return bridge.result(asyncio.run_coroutine_threadsafe(_later(5, 0), loop))

        before = bridge.foreign_waits()
        # an execute on a worker thread (timed) waiting for the loop: its own wait, not counted
        value, _, _, _ = await loop.run_in_executor(None, bridge.timed, call)
        own = bridge.foreign_waits() - before
        # a thread of its own, which the execute waits for: counted
        await loop.run_in_executor(None, bridge.timed, lambda: _in_thread(call))
        return value + own, bridge.foreign_waits() - before

    assert asyncio.run(main()) == (5, 1)


def _in_thread(fn: object) -> None:
    thread = threading.Thread(target=fn)  # type: ignore[arg-type]
    thread.start()
    thread.join()


def test_a_thread_needing_a_loop_held_by_the_code_waiting_for_it_gives_up() -> None:
    """The one deadlock a bridge could make: code on the loop waits for its own thread, which waits for the
    loop. The thread's wait fails after STALL_S instead, and the code goes on."""

    async def main() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        outcome: list[str] = []

        def helper() -> None:
            try:
                bridge.result(asyncio.run_coroutine_threadsafe(_later(1, 0), loop))
                outcome.append("answered")
            except UnavailableError as e:
                outcome.append(e.message)

        def blocking() -> str:
            _in_thread(helper)
            return outcome[0]

        start = time.monotonic()
        message, _, _, _ = await bridge.run(blocking)
        return message, time.monotonic() - start

    message, seconds = asyncio.run(main())
    assert "now runs on worker threads, retry" in message
    assert bridge.STALL_S <= seconds < bridge.STALL_S + 2
