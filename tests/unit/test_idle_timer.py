"""The inbound idle timer moves a deadline instead of making a timer per line."""

from __future__ import annotations

import asyncio

import uvloop

from relaymail.inbound.protocol import CommandLoop


class _Handler:
    pass


def _loop_protocol(loop: asyncio.AbstractEventLoop, fired: list[float]) -> CommandLoop:
    protocol = CommandLoop(_Handler(), loop=loop, timeout=60)
    protocol._timeout_cb = lambda: fired.append(loop.time())  # type: ignore[method-assign]
    return protocol


def test_under_uvloop_a_deadline_already_past_fires_and_a_reset_after_it_works() -> None:
    # uvloop answers call_at for a time already past with a plain Handle (no when()):
    # the timer must not depend on asking it when it fires.
    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        protocol = _loop_protocol(loop, fired)
        protocol._reset_timeout(-1.0)  # set for a time already past
        protocol._reset_timeout(0.05)  # later than the one set: left as it is
        await asyncio.sleep(0)
        await asyncio.sleep(0.2)
        protocol._reset_timeout(60)
        protocol._pause_timeout()
        return fired

    fired = uvloop.run(scenario())
    assert len(fired) == 1


async def test_a_deadline_moved_on_is_waited_for_and_fires_once() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    protocol = _loop_protocol(loop, fired)
    start = loop.time()
    protocol._reset_timeout(0.05)
    await asyncio.sleep(0.03)
    protocol._reset_timeout(0.1)  # a command came: the deadline moves, no new timer
    await asyncio.sleep(0.3)
    assert len(fired) == 1 and fired[0] >= start + 0.1  # not at the first deadline
    protocol._pause_timeout()


async def test_a_shorter_timeout_than_the_one_set_moves_the_timer_earlier() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    protocol = _loop_protocol(loop, fired)
    protocol._reset_timeout(30)
    protocol._reset_timeout(0.05)
    await asyncio.sleep(0.3)
    assert len(fired) == 1
