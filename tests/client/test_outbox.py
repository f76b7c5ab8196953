"""bridge.client.outbox: bounded, expiring, released by acks, re-sent after a loss."""

from __future__ import annotations

import asyncio

import pytest

from bridge.client.errors import ClientError
from bridge.client.outbox import Command, Outbox
from bridge.exceptions import BridgeError


def command(n: int, at: float = 0.0) -> Command:
    fut: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
    return Command(f"c{n}", {"type": "vote", "id": f"c{n}", "payload": {}}, fut, at)


async def test_acks_release_their_command_once():
    box = Outbox(limit=10, ttl=60)
    a, b = command(1), command(2)
    box.add(a, 0.0)
    box.add(b, 0.0)
    assert len(box) == 2
    assert box.ack({"type": "ack", "id": "c2", "status": "ok"})
    assert await b.future == {"type": "ack", "id": "c2", "status": "ok"}
    assert not box.ack({"type": "ack", "id": "c2", "status": "ok"})  # a duplicate ack
    assert not box.ack({"type": "ack", "id": "nope"})
    assert len(box) == 1 and not a.future.done()


async def test_the_oldest_is_dropped_when_full():
    box = Outbox(limit=2, ttl=60)
    items = [command(i) for i in range(3)]
    for item in items:
        box.add(item, 0.0)
    with pytest.raises(ClientError) as info:
        await items[0].future
    assert info.value.code == "outbox_overflow" and isinstance(info.value, BridgeError)
    assert len(box) == 2


async def test_old_commands_expire():
    box = Outbox(limit=10, ttl=5)
    old, fresh = command(1, at=0.0), command(2, at=4.0)
    box.add(old, 0.0)
    box.add(fresh, 4.0)
    box.expire(5.0)  # exactly ttl: kept
    assert len(box) == 2
    box.expire(5.5)
    assert len(box) == 1
    with pytest.raises(ClientError, match="expired"):
        await old.future


async def test_sent_marks_and_requeue():
    box = Outbox(limit=10, ttl=60)
    a, b = command(1), command(2)
    box.add(a, 0.0)
    assert box.take_unsent() == [a]
    box.add(b, 0.0)
    assert box.take_unsent() == [b]  # a is with the transport already
    assert box.take_unsent() == []
    Outbox.unsend([b])  # the POST failed
    assert box.take_unsent() == [b]
    box.requeue()  # a new transport: everything again, in order
    assert box.take_unsent() == [a, b]


async def test_fail_all_ends_every_waiter():
    box = Outbox(limit=10, ttl=60)
    items = [command(i) for i in range(3)]
    for item in items:
        box.add(item, 0.0)
    error = ClientError("close_4401", "refused", fatal=True)
    box.fail_all(error)
    assert len(box) == 0
    for item in items:
        with pytest.raises(ClientError) as info:
            await item.future
        assert info.value is error
