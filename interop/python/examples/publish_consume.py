"""Publish one message to Warren (or any AMQP 0-9-1 broker) with pika and consume it back.

    python interop/python/examples/publish_consume.py [AMQP_URL]

AMQP_URL defaults to amqp://guest:guest@127.0.0.1:5672/%2F (Warren's and RabbitMQ's default).
"""

import sys

import pika


def main() -> int:
    url = sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@127.0.0.1:5672/%2F"
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    # A server-named, exclusive queue: it disappears when this program disconnects.
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.confirm_delivery()
    channel.basic_publish("", queue, b"hello from pika")
    for method, _properties, body in channel.consume(queue, inactivity_timeout=5):
        if method is None:
            print("no message within 5 s", file=sys.stderr)
            return 1
        channel.basic_ack(method.delivery_tag)
        print(f"received {body.decode()!r} from {queue}")
        break
    connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
