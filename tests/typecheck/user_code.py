"""Ordinary user code: `mypy --strict` must accept it (tests/test_typing.py); never run."""

import asyncio
import sys

import ferroloop
from typing_extensions import assert_type


async def main() -> int:
    await asyncio.sleep(0)
    return 42


def callback(text: str, count: int) -> None:
    print(text * count)


def use() -> None:
    loop = ferroloop.Loop()
    h: asyncio.Handle = loop.call_soon(print)
    t: asyncio.TimerHandle = loop.call_later(1.0, callback, "x", 2)
    assert_type(loop.call_at(loop.time() + 1, callback, "y", 1), asyncio.TimerHandle)
    future: asyncio.Future[int] = loop.create_future()
    task: asyncio.Task[int] = loop.create_task(main())
    print(future, task)
    h.cancel()
    t.cancel()
    loop.close()
    other: asyncio.AbstractEventLoop = ferroloop.new_event_loop()
    other.close()
    assert_type(ferroloop.run(main()), int)
    assert_type(ferroloop.run(main(), debug=True), int)
    if sys.version_info >= (3, 12):
        assert_type(asyncio.run(main(), loop_factory=ferroloop.new_event_loop), int)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
            assert_type(runner.run(main()), int)
    ferroloop.install()
    policy: asyncio.AbstractEventLoopPolicy = ferroloop.EventLoopPolicy()
    print(policy, ferroloop.__version__, ferroloop.BUILD_PROFILE)
