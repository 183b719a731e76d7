"""Interop scenarios driven by kombu over py-amqp, the transport Celery uses.

py-amqp offers its mechanisms in the order GSSAPI, EXTERNAL, AMQPLAIN, PLAIN and takes the first
the broker lists, so against RabbitMQ (which lists "PLAIN AMQPLAIN") kombu logs in with AMQPLAIN
unless told otherwise. py-amqp also encodes integers beyond 32 bits with the type letter 'L',
which RabbitMQ accepts and routes on like 'l'.
"""

from __future__ import annotations

import datetime
import decimal
import socket

from kombu import Connection, Consumer, Exchange, Producer, Queue

from conftest import BROKER


def connect(**kwargs) -> Connection:
    connection = Connection(BROKER.url(), connect_timeout=5, **kwargs)
    connection.connect()
    return connection


def drain(connection, consumer_queues, count, seconds=5.0, no_ack=False):
    got = []
    with Consumer(connection, queues=consumer_queues, no_ack=no_ack, callbacks=[lambda body, message: got.append(message)]):
        while len(got) < count:
            try:
                connection.drain_events(timeout=seconds)
            except socket.timeout:
                break
    return got


def test_connect_amqplain():
    connection = connect(login_method="AMQPLAIN")
    try:
        assert connection.connected
        channel = connection.channel()
        queue, _, _ = channel.queue_declare("", exclusive=True)
        assert queue.startswith("amq.gen-")
    finally:
        connection.release()


def test_connect_plain():
    connection = connect(login_method="PLAIN")
    try:
        assert connection.connected
        assert connection.connection.server_properties.get("product")
    finally:
        connection.release()


def test_publish_consume_manual_ack(names):
    connection = connect()  # default login: AMQPLAIN
    try:
        exchange = Exchange(names.exchange(), type="direct", durable=False)
        queue = Queue(names.queue(), exchange=exchange, routing_key="work", durable=False)
        producer = Producer(connection, exchange=exchange, serializer="json")
        for i in range(10):
            producer.publish({"n": i}, routing_key="work", declare=[queue], retry=False)
        got = drain(connection, [queue], 10)
        assert [m.payload for m in got] == [{"n": i} for i in range(10)]
        assert all(m.content_type == "application/json" for m in got)
        for message in got:
            message.ack()
        channel = connection.channel()
        _name, message_count, _consumers = channel.queue_declare(queue.name, passive=True)
        assert message_count == 0
    finally:
        connection.release()


def test_exchange_headers_routing(names):
    connection = connect()
    try:
        channel = connection.channel()
        exchange = names.exchange()
        channel.exchange_declare(exchange, "headers", durable=False, auto_delete=False)
        queue = names.queue()
        channel.queue_declare(queue)
        # 2**40 travels as py-amqp's 'L' in both the binding and the message headers.
        channel.queue_bind(queue, exchange, arguments={"x-match": "all", "big": 2**40, "kind": "k"})
        producer = Producer(connection, exchange=Exchange(exchange, type="headers", durable=False), serializer="raw")
        producer.publish(b"match", headers={"big": 2**40, "kind": "k"}, retry=False)
        producer.publish(b"no-match", headers={"big": 2**40 + 1, "kind": "k"}, retry=False)
        got = drain(connection, [Queue(queue, no_declare=True)], 2, seconds=1, no_ack=True)
        assert [m.body for m in got] == [b"match"]
    finally:
        connection.release()


def test_properties_round_trip(names):
    connection = connect()
    try:
        queue = Queue(names.queue(), durable=False)
        headers = {
            "str": "s",
            "int": 7,
            "int64": -(2**40),
            "double": 2.5,
            "decimal": decimal.Decimal("1.25"),
            "bool": False,
            "none": None,
            "time": datetime.datetime(2024, 5, 6, 7, 8, 9),
            "list": [1, "x", {"y": [2]}],
            "nested": {"a": {"b": {"c": "d"}}},
        }
        producer = Producer(connection, serializer="json")
        producer.publish(
            {"hello": "world"},
            routing_key=queue.name,
            declare=[queue],
            headers=headers,
            correlation_id="corr",
            reply_to="reply",
            priority=4,
            expiration=30,
            delivery_mode=2,
            retry=False,
        )
        [message] = drain(connection, [queue], 1, no_ack=True)
        assert message.payload == {"hello": "world"}
        props = message.properties
        assert (props["correlation_id"], props["reply_to"], props["priority"]) == ("corr", "reply", 4)
        assert (props["expiration"], props["delivery_mode"]) == ("30000", 2)
        assert message.headers == headers
    finally:
        connection.release()
