"""A session's gate: FIFO, at most ``limit`` inside, every way out of an await."""

import asyncio

import pytest

from bridge.runtime.gate import Gate


async def test_first_come_first_served_one_at_a_time():
    gate = Gate(1)
    order: list[int] = []
    inside = 0
    most = 0

    async def one(i: int) -> None:
        nonlocal inside, most
        async with gate.held():
            inside += 1
            most = max(most, inside)
            order.append(i)
            await asyncio.sleep(0.001 * (5 - i % 5))
            inside -= 1

    await asyncio.gather(*(one(i) for i in range(20)))
    assert order == list(range(20)) and most == 1
    assert gate.inside == 0 and gate.waiting == 0


async def test_a_limit_of_three():
    gate = Gate(3)
    inside, most = 0, 0

    async def one() -> None:
        nonlocal inside, most
        async with gate.held():
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.005)
            inside -= 1

    await asyncio.gather(*(one() for _ in range(12)))
    assert most == 3


async def test_a_waiter_cancelled_leaves_the_queue():
    gate = Gate(1)
    await gate.acquire()
    waiter = asyncio.ensure_future(gate.acquire())
    second = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    assert gate.waiting == 2
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.waiting == 1
    gate.release()
    await asyncio.wait_for(second, 1)  # the next in line goes in, not the cancelled one
    assert gate.inside == 1 and gate.waiting == 0
    gate.release()
    assert gate.inside == 0


async def test_cancelled_as_its_turn_came_passes_the_turn_on():
    gate = Gate(1)
    await gate.acquire()
    first = asyncio.ensure_future(gate.acquire())
    second = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    gate.release()  # first's turn: its future is set ...
    first.cancel()  # ... and it is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert gate.inside == 1 and gate.waiting == 0


async def test_an_exception_inside_releases():
    gate = Gate(1)
    with pytest.raises(RuntimeError):
        async with gate.held():
            raise RuntimeError("upstream bug")
    assert gate.inside == 0
    async with gate.held():
        assert gate.inside == 1


async def test_resize_lets_waiters_in():
    gate = Gate(1)
    await gate.acquire()
    waiters = [asyncio.ensure_future(gate.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    gate.resize(3)
    await asyncio.sleep(0)
    assert sum(w.done() for w in waiters) == 2 and gate.inside == 3
    for _ in range(3):
        gate.release()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert gate.inside == 1
