"""The key interop scenarios driven by aio-pika (asyncio; aiormq and pamqp underneath).

pamqp encodes header values with the smallest fitting type (b, s, u, I, i, l, f, D, T, ...), so
this client covers more field-value types than pika does. aiormq offers PLAIN and EXTERNAL only
(no AMQPLAIN), so AMQPLAIN is covered by kombu/py-amqp and amqplib.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import functools
import os

import aio_pika
import aiormq.exceptions
import pytest
from aio_pika import DeliveryMode, Message

from conftest import BROKER


def run_async(test):
    """Run an async scenario in a fresh event loop (no pytest-asyncio needed)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), timeout=45))

    return wrapper


async def connect(auth: str = "plain") -> aio_pika.abc.AbstractConnection:
    return await aio_pika.connect(BROKER.url(f"auth={auth}"), timeout=10)


async def drain(queue) -> list[bytes]:
    bodies = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        bodies.append(message.body)
    return bodies


async def next_messages(queue, count: int, no_ack=False, seconds=5.0) -> list:
    got: list = []
    async with queue.iterator(no_ack=no_ack) as messages:
        async with asyncio.timeout(seconds):
            async for message in messages:
                got.append(message)
                if len(got) == count:
                    break
    return got


@run_async
async def test_connect_plain():
    connection = await connect("plain")
    async with connection:
        caps = connection.transport.connection.server_capabilities
        for cap in ("publisher_confirms", "basic.nack", "consumer_cancel_notify", "per_consumer_qos"):
            assert caps.get(cap) is True, caps
        channel = await connection.channel()
        assert not channel.is_closed


@run_async
async def test_publish_consume_manual_ack(names):
    async with await connect() as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(names.queue())
        bodies = [f"m{i}".encode() for i in range(20)]
        for body in bodies:
            await channel.default_exchange.publish(Message(body), queue.name)
        got = await next_messages(queue, len(bodies))
        assert [m.body for m in got] == bodies
        assert [m.delivery_tag for m in got] == list(range(1, 21))
        assert not any(m.redelivered for m in got)
        for message in got:
            await message.ack()
        await channel.close()
        channel = await connection.channel()
        again = await channel.declare_queue(queue.name, passive=True)
        assert again.declaration_result.message_count == 0


@run_async
async def test_nack_requeue_redelivered(names):
    async with await connect() as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(names.queue())
        for body in (b"m1", b"m2"):
            await channel.default_exchange.publish(Message(body), queue.name)
        first = await queue.get()
        assert (first.body, first.redelivered) == (b"m1", False)
        await first.nack(requeue=True)
        again = await queue.get()
        assert (again.body, again.redelivered) == (b"m1", True)
        await again.reject(requeue=False)
        [last] = await next_messages(queue, 1)
        assert (last.body, last.redelivered) == (b"m2", False)
        await last.ack()
        assert await queue.get(fail=False) is None


@run_async
async def test_prefetch_limits_unacked(names):
    async with await connect() as connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=2)
        queue = await channel.declare_queue(names.queue())
        for i in range(6):
            await channel.default_exchange.publish(Message(f"m{i}".encode()), queue.name)
        got: list = []

        async def on_message(message):
            got.append(message)

        async def settle(expected: int):
            """Wait for `expected` deliveries, then make sure no more arrive for a while."""
            async with asyncio.timeout(5):
                while len(got) < expected:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            assert len(got) == expected

        await queue.consume(on_message)
        await settle(2)
        await got[0].ack()
        await settle(3)
        await got[2].ack(multiple=True)
        await settle(5)
        assert [m.body for m in got] == [f"m{i}".encode() for i in range(5)]


@run_async
async def test_publisher_confirms(names):
    async with await connect() as connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(names.queue())
        confirms = await asyncio.gather(
            *(channel.default_exchange.publish(Message(b"c"), queue.name) for _ in range(100))
        )
        assert all(isinstance(c, aiormq.spec.Basic.Ack) for c in confirms)
        again = await channel.declare_queue(queue.name, passive=True)
        assert again.declaration_result.message_count == 100


@run_async
async def test_mandatory_unroutable_returned(names):
    async with await connect() as connection:
        # aiormq fails the publish only when the basic.return arrives before the basic.ack.
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.declare_exchange(names.exchange(), aio_pika.ExchangeType.DIRECT)
        with pytest.raises(aio_pika.exceptions.DeliveryError) as excinfo:
            await exchange.publish(Message(b"lost", message_id="m-1"), "nowhere", mandatory=True)
        frame = excinfo.value.frame
        assert (frame.reply_code, frame.reply_text, frame.routing_key) == (312, "NO_ROUTE", "nowhere")
        assert excinfo.value.message.body == b"lost"
        # Not mandatory: silently dropped and acked.
        confirm = await exchange.publish(Message(b"dropped"), "nowhere", mandatory=False)
        assert isinstance(confirm, aiormq.spec.Basic.Ack)


@run_async
async def test_basic_get_and_get_empty(names):
    async with await connect() as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(names.queue())
        assert await queue.get(fail=False) is None
        with pytest.raises(aio_pika.exceptions.QueueEmpty):
            await queue.get()
        for body in (b"g1", b"g2"):
            await channel.default_exchange.publish(Message(body), queue.name)
        message = await queue.get(no_ack=True)
        assert (message.body, message.message_count) == (b"g1", 1)
        message = await queue.get(no_ack=True)
        assert (message.body, message.message_count) == (b"g2", 0)


@run_async
async def test_large_body_1mib(names):
    async with await connect() as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(names.queue())
        body = os.urandom(1024 * 1024)
        await channel.default_exchange.publish(Message(body), queue.name)
        [message] = await next_messages(queue, 1, no_ack=True)
        assert message.body == body


@run_async
async def test_empty_body(names):
    async with await connect() as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(names.queue())
        await channel.default_exchange.publish(Message(b"", type="empty"), queue.name)
        [message] = await next_messages(queue, 1, no_ack=True)
        assert (message.body, message.type) == (b"", "empty")


@run_async
async def test_properties_round_trip(names):
    async with await connect() as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(names.queue())
        stamp = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
        headers = {
            "int8": -5,
            "int16": -3000,
            "uint16": 60000,
            "int32": -100000,
            "uint32": 3_000_000_000,
            "int64": -(2**40),
            "float": 1.5,
            "decimal": decimal.Decimal("12.345"),
            "str": "ünïcode",
            "bytes": bytearray(b"\x00\xff"),
            "bool": True,
            "void": None,
            "time": stamp,
            "array": [1, "a", [2.5], {"k": "v"}],
            "nested": {"a": {"b": {"c": [True, False]}}},
        }
        sent = Message(
            b"props",
            headers=headers,
            content_type="text/plain",
            content_encoding="identity",
            delivery_mode=DeliveryMode.PERSISTENT,
            priority=3,
            correlation_id="c-1",
            reply_to="r-1",
            expiration=120,
            message_id="m-1",
            timestamp=stamp,
            type="t-1",
            user_id=BROKER.user,
            app_id="a-1",
        )
        await channel.default_exchange.publish(sent, queue.name)
        [got] = await next_messages(queue, 1, no_ack=True)
        for field in (
            "content_type",
            "content_encoding",
            "delivery_mode",
            "priority",
            "correlation_id",
            "reply_to",
            "expiration",
            "message_id",
            "timestamp",
            "type",
            "user_id",
            "app_id",
        ):
            assert getattr(got, field) == getattr(sent, field), field
        expected = dict(headers, bytes=b"\x00\xff")
        assert got.headers == expected


@run_async
async def test_consumer_cancel_on_queue_delete(names):
    async with await connect() as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(names.queue())
        cancelled = asyncio.get_running_loop().create_future()
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(
            lambda frame: cancelled.done() or cancelled.set_result(frame.consumer_tag)
        )
        async def ignore(message):
            pass

        tag = await queue.consume(ignore)
        async with await connect() as other:
            other_channel = await other.channel()
            await other_channel.queue_delete(queue.name)
        assert await asyncio.wait_for(cancelled, 5) == tag
        assert not channel.is_closed


@run_async
async def test_error_404_missing_queue(names):
    async with await connect() as connection:
        channel = await connection.channel()
        missing = names.queue("missing")
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity) as excinfo:
            await channel.declare_queue(missing, passive=True)
        assert f"NOT_FOUND - no queue '{missing}'" in str(excinfo.value)
        assert not connection.is_closed
        channel = await connection.channel()
        await channel.declare_queue(names.queue("fine"))


@run_async
async def test_error_406_redeclare_different(names):
    async with await connect() as connection:
        channel = await connection.channel()
        name = names.queue()
        await channel.declare_queue(name, durable=False)
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as excinfo:
            await channel.declare_queue(name, durable=True)
        assert "PRECONDITION_FAILED - inequivalent arg 'durable'" in str(excinfo.value)
        assert not connection.is_closed
        channel = await connection.channel()
        await channel.declare_queue(name, durable=False)


@run_async
async def test_error_403_amq_prefix(names):
    async with await connect() as connection:
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as excinfo:
            await channel.declare_queue(f"amq.{names.prefix}")
        assert "ACCESS_REFUSED" in str(excinfo.value)
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await channel.declare_exchange(f"amq.{names.prefix}", aio_pika.ExchangeType.FANOUT)
        assert not connection.is_closed
        channel = await connection.channel()
        await channel.declare_queue(names.queue("fine"))


@run_async
async def test_reconnect_redeclare(names):
    # connect_robust reconnects by itself and restores its channels, queues and consumers. The
    # broker closes the connection here with a connection error (503, an unknown exchange type).
    connection = await aio_pika.connect_robust(BROKER.url(), timeout=10, reconnect_interval=0.2)
    async with connection:
        reconnected = asyncio.Event()
        connection.reconnect_callbacks.add(lambda *args: reconnected.set())
        channel = await connection.channel()
        queue = await channel.declare_queue(names.queue(), auto_delete=False)
        got: asyncio.Queue = asyncio.Queue()

        async def on_message(message):
            await got.put(message.body)

        await queue.consume(on_message, no_ack=True)
        doomed = await connection.channel()
        with pytest.raises(aiormq.exceptions.AMQPError):
            await doomed.declare_exchange(names.exchange(), "no-such-type")
        await asyncio.wait_for(reconnected.wait(), 10)
        async with await connect() as other:
            other_channel = await other.channel()
            await other_channel.default_exchange.publish(Message(b"after-reconnect"), queue.name)
        assert await asyncio.wait_for(got.get(), 5) == b"after-reconnect"
