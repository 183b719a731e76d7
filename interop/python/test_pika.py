"""The interop scenarios driven by pika's BlockingConnection (the most used Python client).

pika has no AMQPLAIN (its credentials are PLAIN and EXTERNAL only); AMQPLAIN is covered by
kombu/py-amqp, aio-pika and amqplib.
"""

from __future__ import annotations

import datetime
import decimal
import os
import time

import pika
import pika.exceptions
import pytest
from pika.spec import BasicProperties

from conftest import BROKER


def connect(**overrides) -> pika.BlockingConnection:
    return pika.BlockingConnection(BROKER.pika_params(**overrides))


@pytest.fixture
def connection():
    conn = connect()
    yield conn
    if conn.is_open:
        conn.close()


def drain(channel, queue: str) -> list[bytes]:
    """Every ready message of `queue`, by basic.get with auto-ack, in order."""
    bodies = []
    while True:
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


def collect(connection, channel, queue: str, count: int, auto_ack=False, seconds=5.0):
    """Consume until `count` deliveries arrived (or `seconds` passed); returns (method, props, body)."""
    got = []
    tag = channel.basic_consume(
        queue, lambda ch, method, props, body: got.append((method, props, body)), auto_ack=auto_ack
    )
    deadline = time.monotonic() + seconds
    while len(got) < count and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)
    channel.basic_cancel(tag)
    return got


def assert_channel_closed(excinfo, code: int, text_prefix: str):
    error = excinfo.value
    assert error.reply_code == code, error
    assert error.reply_text.startswith(text_prefix), error.reply_text


# -- connecting ------------------------------------------------------------------------------


def test_connect_plain(connection):
    impl = connection._impl
    props = impl.server_properties
    for key in ("product", "version", "platform", "copyright", "information"):
        assert key in props, f"server-properties lacks {key}: {props}"
    caps = impl.server_capabilities
    for cap in (
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ):
        assert caps.get(cap) is True, f"capability {cap} missing: {caps}"
    channel = connection.channel()
    assert channel.is_open
    channel.close()


def test_connect_bad_password_refused():
    # pika advertises authentication_failure_close, so RabbitMQ answers with a 403 close.
    params = BROKER.pika_params(credentials=pika.PlainCredentials(BROKER.user, "wrong-password"))
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as excinfo:
        pika.BlockingConnection(params)
    assert "ACCESS_REFUSED" in str(excinfo.value)


# -- topology and routing --------------------------------------------------------------------


def test_exchange_direct_routing(connection, names):
    channel = connection.channel()
    channel.confirm_delivery()
    exchange = names.exchange()
    channel.exchange_declare(exchange, "direct", auto_delete=False)
    q1, q2 = names.queue("q1"), names.queue("q2")
    for queue in (q1, q2):
        channel.queue_declare(queue)
    channel.queue_bind(q1, exchange, routing_key="a")
    channel.queue_bind(q2, exchange, routing_key="a")
    channel.queue_bind(q2, exchange, routing_key="b")
    for key in ("a", "b", "c"):
        channel.basic_publish(exchange, key, key.encode())
    assert drain(channel, q1) == [b"a"]
    assert drain(channel, q2) == [b"a", b"b"]
    # The default exchange routes by queue name.
    channel.basic_publish("", q1, b"direct-by-name")
    assert drain(channel, q1) == [b"direct-by-name"]
    channel.queue_unbind(q2, exchange, routing_key="a")
    channel.basic_publish(exchange, "a", b"after-unbind")
    assert drain(channel, q1) == [b"after-unbind"]
    assert drain(channel, q2) == []


def test_exchange_fanout_routing(connection, names):
    channel = connection.channel()
    channel.confirm_delivery()
    exchange = names.exchange()
    channel.exchange_declare(exchange, "fanout")
    queues = [names.queue(f"q{i}") for i in range(3)]
    for queue in queues:
        channel.queue_declare(queue)
        channel.queue_bind(queue, exchange, routing_key="ignored")
    channel.basic_publish(exchange, "anything", b"m1")
    channel.basic_publish(exchange, "", b"m2")
    for queue in queues:
        assert drain(channel, queue) == [b"m1", b"m2"]


def test_exchange_topic_routing(connection, names):
    channel = connection.channel()
    channel.confirm_delivery()
    exchange = names.exchange()
    channel.exchange_declare(exchange, "topic")
    patterns = {"star": "a.*.c", "hash": "a.#", "tail": "#.z", "one": "*", "exact": "a.b.c"}
    queues = {label: names.queue(label) for label in patterns}
    for label, pattern in patterns.items():
        channel.queue_declare(queues[label])
        channel.queue_bind(queues[label], exchange, routing_key=pattern)
    keys = ["a.b.c", "a", "a.b.b.c", "x.y.z", "z", "b", "a.x.c"]
    for key in keys:
        channel.basic_publish(exchange, key, key.encode())
    expected = {
        "star": [b"a.b.c", b"a.x.c"],
        "hash": [b"a.b.c", b"a", b"a.b.b.c", b"a.x.c"],
        "tail": [b"x.y.z", b"z"],
        "one": [b"a", b"z", b"b"],
        "exact": [b"a.b.c"],
    }
    for label, bodies in expected.items():
        assert drain(channel, queues[label]) == bodies, label


def test_exchange_headers_routing(connection, names):
    channel = connection.channel()
    channel.confirm_delivery()
    exchange = names.exchange()
    channel.exchange_declare(exchange, "headers")
    q_all, q_any = names.queue("all"), names.queue("any")
    channel.queue_declare(q_all)
    channel.queue_declare(q_any)
    channel.queue_bind(q_all, exchange, arguments={"x-match": "all", "format": "pdf", "type": "report"})
    channel.queue_bind(q_any, exchange, arguments={"x-match": "any", "format": "pdf", "type": "log"})
    cases = [
        ("both", {"format": "pdf", "type": "report"}),
        ("format-only", {"format": "pdf"}),
        ("type-log", {"type": "log"}),
        ("none", {"format": "zip"}),
        ("no-headers", None),
    ]
    for body, headers in cases:
        channel.basic_publish(exchange, "", body.encode(), BasicProperties(headers=headers))
    assert drain(channel, q_all) == [b"both"]
    assert drain(channel, q_any) == [b"both", b"format-only", b"type-log"]


def test_exchange_to_exchange_binding(connection, names):
    channel = connection.channel()
    channel.confirm_delivery()
    source, destination = names.exchange("src"), names.exchange("dst")
    channel.exchange_declare(source, "topic")
    channel.exchange_declare(destination, "fanout")
    channel.exchange_bind(destination, source, routing_key="orders.#")
    queue = names.queue()
    channel.queue_declare(queue)
    channel.queue_bind(queue, destination)
    channel.basic_publish(source, "orders.new", b"routed")
    channel.basic_publish(source, "users.new", b"not-routed")
    assert drain(channel, queue) == [b"routed"]


def test_server_named_queue(connection):
    channel = connection.channel()
    declared = channel.queue_declare("", exclusive=True)
    name = declared.method.queue
    assert name.startswith("amq.gen-"), name
    assert declared.method.message_count == 0
    assert declared.method.consumer_count == 0
    channel.basic_publish("", name, b"to-generated")
    assert drain(channel, name) == [b"to-generated"]


# -- publishing and consuming ----------------------------------------------------------------


def test_publish_consume_manual_ack(connection, names):
    channel = connection.channel()
    queue = names.queue()
    channel.queue_declare(queue)
    bodies = [f"m{i}".encode() for i in range(20)]
    for body in bodies:
        channel.basic_publish("", queue, body)
    got = collect(connection, channel, queue, len(bodies))
    assert [body for _m, _p, body in got] == bodies
    assert all(not method.redelivered for method, _p, _b in got)
    tags = [method.delivery_tag for method, _p, _b in got]
    assert tags == list(range(1, len(bodies) + 1))
    assert all(method.routing_key == queue and method.exchange == "" for method, _p, _b in got)
    for tag in tags[:-5]:
        channel.basic_ack(tag)
    channel.basic_ack(tags[-1], multiple=True)
    # Everything acked: nothing comes back after closing the channel.
    channel.close()
    channel = connection.channel()
    declared = channel.queue_declare(queue, passive=True)
    assert declared.method.message_count == 0


def test_nack_requeue_redelivered(connection, names):
    channel = connection.channel()
    queue = names.queue()
    channel.queue_declare(queue)
    for body in (b"m1", b"m2", b"m3"):
        channel.basic_publish("", queue, body)
    method, _props, body = channel.basic_get(queue)
    assert (body, method.redelivered) == (b"m1", False)
    channel.basic_nack(method.delivery_tag, requeue=True)
    # A requeued message keeps its place at the head and is flagged redelivered.
    method, _props, body = channel.basic_get(queue)
    assert (body, method.redelivered) == (b"m1", True)
    channel.basic_reject(method.delivery_tag, requeue=False)  # dropped for good
    first, _p, b2 = channel.basic_get(queue)
    second, _p, b3 = channel.basic_get(queue)
    assert (b2, b3) == (b"m2", b"m3")
    channel.basic_nack(second.delivery_tag, multiple=True, requeue=True)
    got = [(m.redelivered, b) for m, _p, b in collect(connection, channel, queue, 2, auto_ack=True)]
    assert got == [(True, b"m2"), (True, b"m3")]
    assert channel.queue_declare(queue, passive=True).method.message_count == 0


def test_unacked_requeued_on_channel_close(connection, names):
    channel = connection.channel()
    queue = names.queue()
    channel.queue_declare(queue)
    for body in (b"m1", b"m2"):
        channel.basic_publish("", queue, body)
    got = collect(connection, channel, queue, 2)
    assert [b for _m, _p, b in got] == [b"m1", b"m2"]
    channel.close()
    channel = connection.channel()
    again = collect(connection, channel, queue, 2, auto_ack=True)
    assert [(m.redelivered, b) for m, _p, b in again] == [(True, b"m1"), (True, b"m2")]


def test_prefetch_limits_unacked(connection, names):
    channel = connection.channel()
    queue = names.queue()
    channel.queue_declare(queue)
    for i in range(10):
        channel.basic_publish("", queue, f"m{i}".encode())
    channel.basic_qos(prefetch_count=3)
    got = []
    channel.basic_consume(queue, lambda ch, m, p, b: got.append(m))

    def settle(expected: int):
        """Wait for `expected` deliveries, then make sure no more arrive for a while."""
        deadline = time.monotonic() + 5
        while len(got) < expected and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.05)
        quiet = time.monotonic() + 0.3
        while time.monotonic() < quiet:
            connection.process_data_events(time_limit=0.05)
        assert len(got) == expected

    settle(3)
    channel.basic_ack(got[0].delivery_tag)
    settle(4)
    channel.basic_ack(got[-1].delivery_tag, multiple=True)
    settle(7)
    channel.basic_ack(got[-1].delivery_tag, multiple=True)
    settle(10)
    channel.basic_ack(got[-1].delivery_tag, multiple=True)


def test_publisher_confirms(connection, names):
    channel = connection.channel()
    queue = names.queue()
    channel.queue_declare(queue)
    channel.confirm_delivery()
    # BlockingChannel waits for each basic.ack; a nack would raise NackError.
    for i in range(50):
        channel.basic_publish("", queue, f"m{i}".encode())
    assert channel.queue_declare(queue, passive=True).method.message_count == 50


def test_mandatory_unroutable_returned(connection, names):
    channel = connection.channel()
    exchange = names.exchange()
    channel.exchange_declare(exchange, "direct")
    returned = []
    channel.add_on_return_callback(lambda ch, method, props, body: returned.append((method, props, body)))
    # Without confirms: basic.return 312 NO_ROUTE with the message.
    channel.basic_publish(exchange, "nowhere", b"lost", BasicProperties(message_id="id-1"), mandatory=True)
    deadline = time.monotonic() + 5
    while not returned and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)
    assert len(returned) == 1
    method, props, body = returned[0]
    assert (method.reply_code, method.reply_text) == (312, "NO_ROUTE")
    assert (method.exchange, method.routing_key) == (exchange, "nowhere")
    assert (props.message_id, body) == ("id-1", b"lost")
    # With confirms: pika raises UnroutableError only if the basic.return came before the ack.
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):
        channel.basic_publish(exchange, "nowhere", b"lost-2", mandatory=True)
    # A routable mandatory publish is simply acked.
    queue = names.queue()
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"kept", mandatory=True)
    assert drain(channel, queue) == [b"kept"]


def test_basic_get_and_get_empty(connection, names):
    channel = connection.channel()
    queue = names.queue()
    channel.queue_declare(queue)
    assert channel.basic_get(queue) == (None, None, None)
    for body in (b"g1", b"g2"):
        channel.basic_publish("", queue, body)
    method, _props, body = channel.basic_get(queue)
    assert (body, method.message_count, method.redelivered) == (b"g1", 1, False)
    channel.basic_ack(method.delivery_tag)
    method, _props, body = channel.basic_get(queue, auto_ack=True)
    assert (body, method.message_count) == (b"g2", 0)
    assert channel.basic_get(queue) == (None, None, None)


def test_large_body_1mib(connection, names):
    channel = connection.channel()
    channel.confirm_delivery()
    queue = names.queue()
    channel.queue_declare(queue)
    body = os.urandom(1024 * 1024)
    channel.basic_publish("", queue, body)
    got = collect(connection, channel, queue, 1, auto_ack=True)
    assert len(got) == 1 and got[0][2] == body
    channel.basic_publish("", queue, body + b"tail")
    _m, _p, fetched = channel.basic_get(queue, auto_ack=True)
    assert fetched == body + b"tail"


def test_empty_body(connection, names):
    channel = connection.channel()
    channel.confirm_delivery()
    queue = names.queue()
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"", BasicProperties(content_type="text/plain"))
    channel.basic_publish("", queue, b"")
    method, props, body = channel.basic_get(queue, auto_ack=True)
    assert method is not None and (props.content_type, body) == ("text/plain", b"")
    got = collect(connection, channel, queue, 1, auto_ack=True)
    assert [(p.content_type, b) for _m, p, b in got] == [(None, b"")]


def test_properties_round_trip(connection, names):
    channel = connection.channel()
    channel.confirm_delivery()
    queue = names.queue()
    channel.queue_declare(queue)
    timestamp = 1_700_000_000
    headers = {
        "str": "text é",
        "bytes": b"\x00\x01\xff",
        "true": True,
        "false": False,
        "int32": -123456,
        "int64": 2**40,
        "decimal": decimal.Decimal("3.14"),
        "time": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "void": None,
        "array": [1, "two", [3], {"four": 4}],
        "nested": {"level2": {"level3": {"deep": "yes", "list": []}}, "n": 7},
        "empty-table": {},
    }
    props = BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        delivery_mode=2,
        priority=7,
        correlation_id="corr-1",
        reply_to="reply.queue",
        expiration="600000",
        message_id="msg-1",
        timestamp=timestamp,
        type="interop.type",
        user_id=BROKER.user,  # RabbitMQ refuses a user-id that is not the connection's user
        app_id="warren-interop",
        cluster_id="cluster-x",
    )
    channel.basic_publish("", queue, b"{}", props)
    for fetch in ("consume", "get"):
        if fetch == "get":
            channel.basic_publish("", queue, b"{}", props)
            _m, got, _b = channel.basic_get(queue, auto_ack=True)
        else:
            [(_m, got, _b)] = collect(connection, channel, queue, 1, auto_ack=True)
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
            "cluster_id",
        ):
            assert getattr(got, field) == getattr(props, field), (fetch, field)
        assert got.headers == headers, fetch


def test_user_id_mismatch_refused(connection, names):
    channel = connection.channel()
    queue = names.queue()
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"x", BasicProperties(user_id="someone-else"))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.queue_declare(queue, passive=True)
    assert_channel_closed(excinfo, 406, "PRECONDITION_FAILED")
    assert connection.is_open
    assert connection.channel().queue_declare(queue, passive=True).method.message_count == 0


# -- channels, consumers, queue lifetimes ----------------------------------------------------


def test_many_channels_one_connection(connection, names):
    queue = names.queue()
    channels = [connection.channel() for _ in range(64)]
    assert len({ch.channel_number for ch in channels}) == 64
    channels[0].queue_declare(queue)
    for ch in channels:
        ch.basic_publish("", queue, str(ch.channel_number).encode())
    for ch in channels[::2]:
        ch.close()
    # The other channels are unaffected by their neighbours closing.
    survivors = channels[1::2]
    bodies = []
    for ch in survivors:
        method, _p, body = ch.basic_get(queue, auto_ack=True)
        bodies.append(body)
    remaining = drain(survivors[0], queue)
    got = sorted(int(b) for b in bodies + remaining)
    assert got == sorted(ch.channel_number for ch in channels)


def test_consumer_cancel_on_queue_delete(connection, names):
    channel = connection.channel()
    queue = names.queue()
    channel.queue_declare(queue)
    cancelled = []
    channel.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = channel.basic_consume(queue, lambda *args: None)
    other = connect()
    try:
        other.channel().queue_delete(queue)
    finally:
        other.close()
    deadline = time.monotonic() + 5
    while not cancelled and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)
    assert cancelled == [tag]
    assert channel.is_open


def test_exclusive_queue(connection, names):
    channel = connection.channel()
    queue = names.queue()
    channel.queue_declare(queue, exclusive=True)
    other = connect()
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
            other.channel().basic_consume(queue, lambda *args: None)
        assert_channel_closed(excinfo, 405, "RESOURCE_LOCKED")
        assert other.is_open
        connection.close()  # the owner goes, and its exclusive queue with it
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
            other.channel().queue_declare(queue, passive=True)
        assert_channel_closed(excinfo, 404, "NOT_FOUND")
    finally:
        other.close()


def test_auto_delete_queue(connection, names):
    channel = connection.channel()
    queue = names.queue()
    channel.queue_declare(queue, auto_delete=True)
    # Never consumed: it stays.
    assert channel.queue_declare(queue, passive=True).method.consumer_count == 0
    tag1 = channel.basic_consume(queue, lambda *args: None)
    tag2 = channel.basic_consume(queue, lambda *args: None)
    assert channel.queue_declare(queue, passive=True).method.consumer_count == 2
    channel.basic_cancel(tag1)
    assert channel.queue_declare(queue, passive=True).method.consumer_count == 1
    channel.basic_cancel(tag2)  # the last consumer goes, and the queue with it
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.queue_declare(queue, passive=True)
    assert_channel_closed(excinfo, 404, "NOT_FOUND")


# -- errors the client surfaces --------------------------------------------------------------


def test_error_404_missing_queue(connection, names):
    missing = names.queue("missing")
    channel = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.queue_declare(missing, passive=True)
    assert excinfo.value.reply_code == 404
    assert excinfo.value.reply_text == f"NOT_FOUND - no queue '{missing}' in vhost '{BROKER.vhost}'"
    assert connection.is_open
    channel = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.basic_consume(missing, lambda *args: None)
    assert_channel_closed(excinfo, 404, "NOT_FOUND")
    channel = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.queue_bind(missing, "amq.direct", routing_key="k")
    assert_channel_closed(excinfo, 404, "NOT_FOUND")
    # Publishing to a missing exchange closes the channel asynchronously.
    channel = connection.channel()
    channel.basic_publish(names.exchange("missing"), "k", b"x")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.queue_declare(names.queue("after"))
    assert_channel_closed(excinfo, 404, "NOT_FOUND - no exchange")
    assert connection.is_open
    assert connection.channel().is_open


def test_error_406_redeclare_different(connection, names):
    queue = names.queue()
    exchange = names.exchange()
    channel = connection.channel()
    channel.queue_declare(queue, durable=False)
    channel.exchange_declare(exchange, "direct")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.queue_declare(queue, durable=True)
    assert_channel_closed(excinfo, 406, "PRECONDITION_FAILED - inequivalent arg 'durable'")
    channel = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.exchange_declare(exchange, "fanout")
    assert_channel_closed(excinfo, 406, "PRECONDITION_FAILED - inequivalent arg 'type'")
    # An unknown delivery tag is a 406 too.
    channel = connection.channel()
    channel.basic_ack(999)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.queue_declare(queue, passive=True)
    assert_channel_closed(excinfo, 406, "PRECONDITION_FAILED - unknown delivery tag 999")
    assert connection.is_open
    # An identical redeclare is fine.
    assert connection.channel().queue_declare(queue, durable=False).method.queue == queue


def test_error_403_amq_prefix(connection, names):
    channel = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.queue_declare(f"amq.{names.prefix}")
    assert_channel_closed(excinfo, 403, "ACCESS_REFUSED")
    channel = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.exchange_declare(f"amq.{names.prefix}", "direct")
    assert_channel_closed(excinfo, 403, "ACCESS_REFUSED")
    assert connection.is_open
    # Passive declares of the predeclared amq.* exchanges are allowed.
    channel = connection.channel()
    for name in ("amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"):
        channel.exchange_declare(name, passive=True)


# -- reconnecting ----------------------------------------------------------------------------


def test_reconnect_redeclare(names):
    queue = names.queue()
    exchange = names.exchange()

    def declare(channel):
        channel.exchange_declare(exchange, "topic")
        ok = channel.queue_declare(queue)
        channel.queue_bind(queue, exchange, routing_key="k.#")
        return ok

    first = connect()
    channel = first.channel()
    channel.confirm_delivery()
    assert declare(channel).method.message_count == 0
    channel.basic_publish(exchange, "k.1", b"before")
    first.close()
    second = connect()
    try:
        channel = second.channel()
        channel.confirm_delivery()
        assert declare(channel).method.message_count == 1
        channel.basic_publish(exchange, "k.2", b"after")
        assert drain(channel, queue) == [b"before", b"after"]
    finally:
        second.close()


# -- more of the broker's contract: consumers, recover, tx, purge, reply-to, heartbeats --------


def test_consumer_round_robin(connection, names):
    channel = connection.channel()
    queue = names.queue()
    channel.queue_declare(queue)
    got = {"a": [], "b": []}
    channel.basic_consume(queue, lambda ch, m, p, b: got["a"].append(b), auto_ack=True)
    channel.basic_consume(queue, lambda ch, m, p, b: got["b"].append(b), auto_ack=True)
    for i in range(10):
        channel.basic_publish("", queue, str(i).encode())
    deadline = time.monotonic() + 5
    while len(got["a"]) + len(got["b"]) < 10 and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)
    # Alternating between the two consumers, each in publish order.
    assert sorted([got["a"], got["b"]]) == [
        [str(i).encode() for i in range(0, 10, 2)],
        [str(i).encode() for i in range(1, 10, 2)],
    ]


def test_exclusive_consumer_refused(connection, names):
    channel = connection.channel()
    queue = names.queue()
    channel.queue_declare(queue)
    channel.basic_consume(queue, lambda *args: None, exclusive=True)
    other = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        other.basic_consume(queue, lambda *args: None)
    assert_channel_closed(excinfo, 403, "ACCESS_REFUSED")
    assert f"queue '{queue}' in vhost '{BROKER.vhost}' in exclusive use" in excinfo.value.reply_text
    assert channel.is_open and connection.is_open


def test_basic_recover_redelivers(connection, names):
    channel = connection.channel()
    queue = names.queue()
    channel.queue_declare(queue)
    for body in (b"r1", b"r2"):
        channel.basic_publish("", queue, body)
    first, _p, _b = channel.basic_get(queue)
    second, _p, _b = channel.basic_get(queue)
    assert not first.redelivered and not second.redelivered
    channel.basic_recover(requeue=True)
    got = [channel.basic_get(queue, auto_ack=True) for _ in range(2)]
    assert [(m.redelivered, b) for m, _p, b in got] == [(True, b"r1"), (True, b"r2")]


def test_tx_commit_rollback(connection, names):
    channel = connection.channel()
    queue = names.queue()
    channel.queue_declare(queue)
    channel.tx_select()
    channel.basic_publish("", queue, b"rolled-back")
    channel.tx_rollback()
    channel.basic_publish("", queue, b"committed")
    check = connection.channel()
    assert check.queue_declare(queue, passive=True).method.message_count == 0
    channel.tx_commit()
    assert drain(check, queue) == [b"committed"]
    # Acks are transactional too: a rolled-back ack leaves the message unacked.
    channel.basic_publish("", queue, b"ack-me")
    channel.tx_commit()
    method, _p, body = channel.basic_get(queue)
    assert body == b"ack-me"
    channel.basic_ack(method.delivery_tag)
    channel.tx_rollback()
    channel.basic_ack(method.delivery_tag)
    channel.tx_commit()
    assert check.queue_declare(queue, passive=True).method.message_count == 0


def test_confirm_then_tx_refused(connection):
    channel = connection.channel()
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.tx_select()
    assert_channel_closed(excinfo, 406, "PRECONDITION_FAILED")
    assert connection.is_open


def test_global_prefetch_shared(connection, names):
    channel = connection.channel()
    q1, q2 = names.queue("q1"), names.queue("q2")
    for queue in (q1, q2):
        channel.queue_declare(queue)
        for i in range(5):
            channel.basic_publish("", queue, f"{queue}-{i}".encode())
    # RabbitMQ 3.x: global=True is a limit shared by all consumers of the channel.
    channel.basic_qos(prefetch_count=3, global_qos=True)
    got = []
    channel.basic_consume(q1, lambda ch, m, p, b: got.append(m))
    channel.basic_consume(q2, lambda ch, m, p, b: got.append(m))
    deadline = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)
    quiet = time.monotonic() + 0.3
    while time.monotonic() < quiet:
        connection.process_data_events(time_limit=0.05)
    assert len(got) == 3
    channel.basic_ack(got[-1].delivery_tag, multiple=True)
    deadline = time.monotonic() + 5
    while len(got) < 6 and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)
    assert len(got) == 6


def test_queue_purge_and_conditional_delete(connection, names):
    channel = connection.channel()
    channel.confirm_delivery()
    queue = names.queue()
    channel.queue_declare(queue)
    for i in range(3):
        channel.basic_publish("", queue, b"x")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.queue_delete(queue, if_empty=True)
    assert_channel_closed(excinfo, 406, "PRECONDITION_FAILED")
    channel = connection.channel()
    # Confirms, so the declare-ok count below cannot overtake the publish.
    channel.confirm_delivery()
    assert channel.queue_purge(queue).method.message_count == 3
    tag = channel.basic_consume(queue, lambda *args: None)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        connection.channel().queue_delete(queue, if_unused=True)
    assert_channel_closed(excinfo, 406, "PRECONDITION_FAILED")
    channel.basic_cancel(tag)
    channel.basic_publish("", queue, b"last")
    assert channel.queue_declare(queue, passive=True).method.message_count == 1
    assert channel.queue_delete(queue, if_unused=True).method.message_count == 1
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.queue_declare(queue, passive=True)
    assert_channel_closed(excinfo, 404, "NOT_FOUND")


def test_direct_reply_to(connection, names):
    requests = names.queue("requests")
    client = connection.channel()
    client.queue_declare(requests)
    replies = []
    client.basic_consume("amq.rabbitmq.reply-to", lambda ch, m, p, b: replies.append((p, b)), auto_ack=True)
    client.basic_publish("", requests, b"ping", BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="c1"))
    server = connect()
    try:
        channel = server.channel()
        method, props, body = None, None, None
        deadline = time.monotonic() + 5
        while method is None and time.monotonic() < deadline:
            method, props, body = channel.basic_get(requests, auto_ack=True)
        assert body == b"ping"
        assert props.reply_to.startswith("amq.rabbitmq.reply-to.")
        channel.basic_publish("", props.reply_to, b"pong", BasicProperties(correlation_id=props.correlation_id))
    finally:
        server.close()
    deadline = time.monotonic() + 5
    while not replies and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)
    assert [(p.correlation_id, b) for p, b in replies] == [("c1", b"pong")]


def test_heartbeat_keeps_idle_connection():
    # A 1 s heartbeat, idle for 3.5 s: the broker must accept the client's value and count pika's
    # heartbeats as life (RabbitMQ closes a peer silent for two intervals). pika itself checks
    # for a silent broker only after heartbeat + 5 s; amqplib's variant of this scenario checks
    # the broker's heartbeats within 2-3 intervals.
    connection = connect(heartbeat=1)
    try:
        connection.sleep(3.5)
        assert connection.is_open
        channel = connection.channel()
        assert channel.queue_declare("", exclusive=True).method.queue.startswith("amq.gen-")
    finally:
        if connection.is_open:
            connection.close()


def test_unacked_requeued_on_connection_close(names):
    first = connect()
    channel = first.channel()
    queue = names.queue()
    channel.queue_declare(queue)
    for body in (b"m1", b"m2"):
        channel.basic_publish("", queue, body)
    got = collect(first, channel, queue, 2)
    assert [b for _m, _p, b in got] == [b"m1", b"m2"]
    first.close()
    second = connect()
    try:
        channel = second.channel()
        # Consume rather than get: the requeue may land a moment after close-ok.
        again = collect(second, channel, queue, 2, auto_ack=True)
        assert [(m.redelivered, b) for m, _p, b in again] == [(True, b"m1"), (True, b"m2")]
    finally:
        second.close()


# -- RabbitMQ extensions that clients rely on -------------------------------------------------


def test_message_ttl_expires(connection, names):
    channel = connection.channel()
    channel.confirm_delivery()
    per_queue = names.queue("queue-ttl")
    per_message = names.queue("message-ttl")
    channel.queue_declare(per_queue, arguments={"x-message-ttl": 100})
    channel.queue_declare(per_message)
    channel.basic_publish("", per_queue, b"expires")
    channel.basic_publish("", per_message, b"expires", BasicProperties(expiration="100"))
    channel.basic_publish("", per_message, b"stays", BasicProperties(expiration="60000"))
    channel.basic_publish("", per_message, b"no-ttl")
    time.sleep(0.4)
    assert drain(channel, per_queue) == []
    assert drain(channel, per_message) == [b"stays", b"no-ttl"]


def test_queue_max_length_drops_head(connection, names):
    channel = connection.channel()
    channel.confirm_delivery()
    queue = names.queue()
    channel.queue_declare(queue, arguments={"x-max-length": 2})
    for body in (b"m1", b"m2", b"m3"):
        channel.basic_publish("", queue, body)
    assert drain(channel, queue) == [b"m2", b"m3"]


def test_dead_letter_on_reject(connection, names):
    channel = connection.channel()
    channel.confirm_delivery()
    dlx = names.exchange("dlx")
    dead = names.queue("dead")
    work = names.queue("work")
    channel.exchange_declare(dlx, "direct")
    channel.queue_declare(dead)
    channel.queue_bind(dead, dlx, routing_key="dead")
    channel.queue_declare(work, arguments={"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead"})
    channel.basic_publish("", work, b"poison", BasicProperties(message_id="p1"))
    method, _p, _b = channel.basic_get(work)
    channel.basic_reject(method.delivery_tag, requeue=False)
    deadline = time.monotonic() + 5
    got = (None, None, None)
    while got[0] is None and time.monotonic() < deadline:
        got = channel.basic_get(dead, auto_ack=True)
    _m, props, body = got
    assert body == b"poison" and props.message_id == "p1"
    [death] = props.headers["x-death"]
    assert (death["queue"], death["reason"], death["count"]) == (work, "rejected", 1)
    assert death["exchange"] == "" and death["routing-keys"] == [work]


def test_queue_expires_when_unused(connection, names):
    channel = connection.channel()
    queue = names.queue()
    channel.queue_declare(queue, arguments={"x-expires": 200})
    assert channel.queue_declare(queue, passive=True).method.queue == queue
    time.sleep(1.0)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.queue_declare(queue, passive=True)
    assert_channel_closed(excinfo, 404, "NOT_FOUND")


def test_consumer_priority(connection, names):
    channel = connection.channel()
    queue = names.queue()
    channel.queue_declare(queue)
    got = {"low": [], "high": []}
    channel.basic_consume(queue, lambda ch, m, p, b: got["low"].append(b), auto_ack=True)
    channel.basic_consume(
        queue, lambda ch, m, p, b: got["high"].append(b), auto_ack=True, arguments={"x-priority": 10}
    )
    for i in range(6):
        channel.basic_publish("", queue, str(i).encode())
    deadline = time.monotonic() + 5
    while len(got["low"]) + len(got["high"]) < 6 and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)
    # An active higher-priority consumer with credit gets every message.
    assert got == {"low": [], "high": [str(i).encode() for i in range(6)]}


# -- the example program in interop/python/examples ------------------------------------------


def test_example_publish_consume():
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parent / "examples" / "publish_consume.py"
    run = subprocess.run(
        [sys.executable, str(example), BROKER.url()], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("received 'hello from pika' from amq.gen-"), run.stdout


# -- more refusals, as RabbitMQ words them ---------------------------------------------------


def test_unknown_vhost_refused():
    params = BROKER.pika_params(virtual_host="interop-no-such-vhost")
    # pika reports a close during connection.open as a probable access denial.
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as excinfo:
        pika.BlockingConnection(params)
    assert "(530) 'NOT_ALLOWED - vhost interop-no-such-vhost not found'" in str(excinfo.value)


def test_unknown_exchange_type_refused(connection, names):
    channel = connection.channel()
    # An unknown type is a connection error in RabbitMQ: 503 COMMAND_INVALID.
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as excinfo:
        channel.exchange_declare(names.exchange(), "no-such-type")
    assert excinfo.value.reply_code == 503
    assert excinfo.value.reply_text == "COMMAND_INVALID - unknown exchange type 'no-such-type'"


def test_default_exchange_refused(connection, names):
    channel = connection.channel()
    queue = names.queue()
    channel.queue_declare(queue)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.queue_bind(queue, "", routing_key="k")
    assert_channel_closed(excinfo, 403, "ACCESS_REFUSED")
    channel = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.exchange_delete("")
    assert_channel_closed(excinfo, 403, "ACCESS_REFUSED")
    assert connection.is_open


def test_tx_commit_without_select_refused(connection):
    channel = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.tx_commit()
    assert_channel_closed(excinfo, 406, "PRECONDITION_FAILED")
    assert connection.is_open


def test_double_ack_refused(connection, names):
    channel = connection.channel()
    queue = names.queue()
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"once")
    method, _p, _b = channel.basic_get(queue)
    channel.basic_ack(method.delivery_tag)
    channel.basic_ack(method.delivery_tag)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.queue_declare(queue, passive=True)
    assert_channel_closed(excinfo, 406, f"PRECONDITION_FAILED - unknown delivery tag {method.delivery_tag}")


def test_invalid_queue_argument_refused(connection, names):
    channel = connection.channel()
    queue = names.queue()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.queue_declare(queue, arguments={"x-max-length": "ten"})
    assert_channel_closed(excinfo, 406, f"PRECONDITION_FAILED - invalid arg 'x-max-length' for queue '{queue}'")
    assert connection.is_open


# -- more queue and exchange features applications declare ----------------------------------


def test_priority_queue_orders_by_priority(connection, names):
    channel = connection.channel()
    channel.confirm_delivery()
    queue = names.queue()
    channel.queue_declare(queue, arguments={"x-max-priority": 10})
    for body, priority in ((b"low", 1), (b"none", None), (b"high", 9), (b"mid", 5), (b"high-2", 9)):
        channel.basic_publish("", queue, body, BasicProperties(priority=priority))
    # Highest priority first, FIFO within a priority; no priority counts as 0.
    assert drain(channel, queue) == [b"high", b"high-2", b"mid", b"low", b"none"]


def test_single_active_consumer(connection, names):
    channel = connection.channel()
    queue = names.queue()
    channel.queue_declare(queue, arguments={"x-single-active-consumer": True})
    got = {"first": [], "second": []}
    first = channel.basic_consume(queue, lambda ch, m, p, b: got["first"].append(b), auto_ack=True)
    channel.basic_consume(queue, lambda ch, m, p, b: got["second"].append(b), auto_ack=True)
    for i in range(4):
        channel.basic_publish("", queue, str(i).encode())
    deadline = time.monotonic() + 5
    while len(got["first"]) < 4 and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)
    assert got == {"first": [b"0", b"1", b"2", b"3"], "second": []}
    # When the active consumer goes, the next one takes over.
    channel.basic_cancel(first)
    channel.basic_publish("", queue, b"4")
    deadline = time.monotonic() + 5
    while not got["second"] and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)
    assert got["second"] == [b"4"]


def test_alternate_exchange_routes_unroutable(connection, names):
    channel = connection.channel()
    channel.confirm_delivery()
    alternate, main = names.exchange("ae"), names.exchange("main")
    channel.exchange_declare(alternate, "fanout")
    channel.exchange_declare(main, "direct", arguments={"alternate-exchange": alternate})
    routed, unrouted = names.queue("routed"), names.queue("unrouted")
    channel.queue_declare(routed)
    channel.queue_declare(unrouted)
    channel.queue_bind(routed, main, routing_key="known")
    channel.queue_bind(unrouted, alternate)
    channel.basic_publish(main, "known", b"to-routed")
    # Mandatory is satisfied by the alternate exchange: no basic.return, so no UnroutableError.
    channel.basic_publish(main, "unknown", b"to-alternate", mandatory=True)
    assert drain(channel, routed) == [b"to-routed"]
    assert drain(channel, unrouted) == [b"to-alternate"]


def test_quorum_queue_declare(connection, names):
    channel = connection.channel()
    channel.confirm_delivery()
    queue = names.queue()
    ok = channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    assert ok.method.queue == queue
    channel.basic_publish("", queue, b"q", BasicProperties(delivery_mode=2))
    method, _p, body = channel.basic_get(queue)
    assert body == b"q"
    channel.basic_ack(method.delivery_tag)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "classic"})
    assert_channel_closed(excinfo, 406, "PRECONDITION_FAILED - inequivalent arg 'x-queue-type'")



def test_quorum_queue_refusals(connection, names):
    queue = names.queue()
    for durable, arguments, text in (
        (False, {"x-queue-type": "quorum"}, f"invalid property 'non-durable' for queue '{queue}' in vhost '/'"),
        (True, {"x-queue-type": "quorum", "x-max-priority": 10},
         f"invalid arg 'x-max-priority' for queue '{queue}' in vhost '/' of queue type rabbit_quorum_queue"),
        (True, {"x-queue-type": "bogus"},
         f"invalid arg 'x-queue-type' for queue '{queue}' in vhost '/': \"unsupported queue type 'bogus'\""),
        (False, {"x-delivery-limit": 3},
         f"invalid arg 'x-delivery-limit' for queue '{queue}' in vhost '/' of queue type rabbit_classic_queue"),
    ):
        channel = connection.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
            channel.queue_declare(queue, durable=durable, arguments=arguments)
        assert (excinfo.value.reply_code, excinfo.value.reply_text) == (406, f"PRECONDITION_FAILED - {text}")
    assert connection.is_open


def poll_get(channel, queue: str, seconds=1.0):
    """basic.get until a message comes (quorum queues apply nacks asynchronously on RabbitMQ)."""
    deadline = time.monotonic() + seconds
    while True:
        method, props, body = channel.basic_get(queue)
        if method is not None or time.monotonic() > deadline:
            return method, props, body
        time.sleep(0.05)


def test_quorum_delivery_limit(connection, names):
    channel = connection.channel()
    channel.confirm_delivery()
    queue, dead, dlx = names.queue("work"), names.queue("dead"), names.exchange("dlx")
    channel.exchange_declare(dlx, "fanout")
    channel.queue_declare(dead)
    channel.queue_bind(dead, dlx)
    channel.queue_declare(queue, durable=True, arguments={
        "x-queue-type": "quorum", "x-delivery-limit": 2, "x-dead-letter-exchange": dlx})
    channel.basic_publish("", queue, b"poison", BasicProperties(headers={"app": "x"}))
    seen = []
    while True:
        method, props, body = poll_get(channel, queue)
        if method is None:
            break
        assert body == b"poison"
        seen.append((method.redelivered, props.headers["x-delivery-count"]))
        channel.basic_nack(method.delivery_tag, requeue=True)
    # Delivered limit + 1 times, the count from 0 on basic.get; then dead-lettered.
    assert seen == [(False, 0), (True, 1), (True, 2)]
    method, props, body = poll_get(channel, dead)
    assert body == b"poison"
    channel.basic_ack(method.delivery_tag)
    headers = props.headers
    assert "x-delivery-count" not in headers
    death = headers["x-death"][0]
    assert (death["reason"], death["queue"], death["count"]) == ("delivery_limit", queue, 1)
    # RabbitMQ sorts the headers it rewrites.
    assert list(headers) == sorted(headers)


def test_reject_publish_dlx(connection, names):
    channel = connection.channel()
    channel.confirm_delivery()
    queue, dead, dlx = names.queue("full"), names.queue("dead"), names.exchange("dlx")
    channel.exchange_declare(dlx, "fanout")
    channel.queue_declare(dead)
    channel.queue_bind(dead, dlx)
    channel.queue_declare(queue, arguments={
        "x-max-length": 1, "x-overflow": "reject-publish-dlx", "x-dead-letter-exchange": dlx})
    outcomes = []
    for body in (b"p0", b"p1", b"p2"):
        try:
            channel.basic_publish("", queue, body)
            outcomes.append("ack")
        except pika.exceptions.NackError:
            outcomes.append("nack")
    assert outcomes == ["ack", "nack", "nack"]
    assert drain(channel, queue) == [b"p0"]
    dead_letters = []
    deadline = time.monotonic() + 2
    while len(dead_letters) < 2 and time.monotonic() < deadline:
        method, props, body = channel.basic_get(dead, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        dead_letters.append((body, props.headers["x-death"][0]["reason"]))
    assert dead_letters == [(b"p1", "maxlen"), (b"p2", "maxlen")]


def test_invalid_expiration_refused(connection, names):
    queue = names.queue()
    connection.channel().queue_declare(queue)
    for expiration, term in (("abc", "no_integer"), ("-1", "{value_negative,-1}"), ("1.5", '{leftover_string,".5"}')):
        channel = connection.channel()
        channel.basic_publish("", queue, b"x", BasicProperties(expiration=expiration))
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as excinfo:
            channel.queue_declare(queue, passive=True)
        assert (excinfo.value.reply_code, excinfo.value.reply_text) == (
            406, f"PRECONDITION_FAILED - invalid expiration '{expiration}': {term}")
    assert connection.is_open
