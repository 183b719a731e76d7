"""The Celery app the kombu/Celery scenarios run: a real worker (subprocess) executes these tasks
and returns results through the broker with the rpc:// result backend.

Every name Celery would otherwise share on the broker (task queue and exchange, pidbox and event
exchanges, worker node name) comes from INTEROP_CELERY_PREFIX, so runs never collide and the test
can delete what it created. The rpc:// backend replies to one queue per client, named by a UUID
(durable, auto-delete, x-expires), through the default exchange; it does not use RabbitMQ's
amq.rabbitmq.reply-to.
"""

from __future__ import annotations

import os
import time

from celery import Celery


def make_app(broker_url: str, prefix: str) -> Celery:
    app = Celery("interop", broker=broker_url, backend="rpc://")
    app.conf.update(
        task_default_queue=f"{prefix}.tasks",
        task_default_exchange=f"{prefix}.tasks",
        task_default_routing_key=f"{prefix}.tasks",
        control_exchange=f"{prefix}.ctl",
        event_exchange=f"{prefix}.ev",
        event_queue_prefix=f"{prefix}.ev",
        result_persistent=False,
        # A broker that does not answer must fail the test, not keep a worker retrying forever.
        broker_connection_retry_on_startup=False,
        broker_connection_max_retries=1,
        broker_connection_timeout=5,
        worker_hijack_root_logger=False,
    )

    @app.task(name="interop.add")
    def add(x, y):
        return x + y

    @app.task(name="interop.slow_mul", acks_late=True)
    def slow_mul(x, y):
        time.sleep(0.05)
        return x * y

    @app.task(name="interop.fail")
    def fail(text):
        raise ValueError(text)

    @app.task(name="interop.hold", bind=True, acks_late=True)
    def hold(self, marker_dir, seconds):
        """Leaves a marker per execution, then works for `seconds` unless this is a redelivery."""
        attempt = len(os.listdir(marker_dir)) + 1
        open(os.path.join(marker_dir, f"attempt-{attempt}"), "w").close()
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        if not redelivered:
            time.sleep(seconds)
        return {"attempt": attempt, "redelivered": redelivered}

    @app.task(name="interop.echo", bind=True)
    def echo(self, payload):
        return {"payload": payload, "delivery_info": dict(self.request.delivery_info or {})}

    return app


# `celery -A celery_app worker` imports this module and finds `app`.
app = make_app(
    os.environ.get("INTEROP_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    os.environ.get("INTEROP_CELERY_PREFIX", "interop.celery"),
)
