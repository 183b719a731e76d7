"""Celery end to end: a real worker (a subprocess, bounded in time) consumes tasks through the
broker with kombu/py-amqp and sends results back with the rpc:// result backend.

The worker runs with Celery's defaults (mingle, gossip, heartbeats, remote control on), so it
also exercises the fanout pidbox, the topic event exchange and their auto-delete queues with
x-message-ttl/x-expires arguments. Only the pool is `solo`, to keep the run light on 2 cores.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from celery_app import make_app
from conftest import BROKER, Names

HERE = Path(__file__).resolve().parent
RESULT_TIMEOUT = 30


class Worker:
    def __init__(self):
        self.prefix = f"interop.celery.{secrets.token_hex(4)}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="celery-worker-", suffix=".log")
        env = dict(
            os.environ,
            INTEROP_CELERY_BROKER=BROKER.url(),
            INTEROP_CELERY_PREFIX=self.prefix,
            PYTHONPATH=str(HERE),
        )
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "celery_app", "worker",
                "--pool=solo", "--loglevel=INFO", "-n", f"{self.prefix}@localhost",
            ],
            cwd=HERE, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # warm shutdown
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        names = Names("celery")
        names.queues += [f"{self.prefix}.tasks", f"{self.prefix}@localhost.{self.prefix}.ctl.pidbox"]
        names.exchanges += [
            f"{self.prefix}.tasks",
            f"{self.prefix}.ctl.pidbox",
            f"reply.{self.prefix}.ctl.pidbox",
            f"{self.prefix}.ev",
        ]
        names.cleanup()


@pytest.fixture(scope="module")
def worker():
    started = Worker()
    yield started
    started.stop()
    if started.process.returncode not in (0, -signal.SIGTERM):
        print(started.output()[-4000:])


@pytest.fixture
def app(worker):
    celery = make_app(BROKER.url(), worker.prefix)
    yield celery
    celery.close()


def result_or_log(result, worker, **kwargs):
    try:
        return result.get(timeout=RESULT_TIMEOUT, **kwargs)
    except Exception:
        if worker.process.poll() is not None:
            print(f"celery worker exited with {worker.process.returncode}:\n{worker.output()[-4000:]}")
        raise


def test_celery_task_rpc_result(app, worker):
    started = time.monotonic()
    results = [app.send_task("interop.add", args=(i, i)) for i in range(10)]
    assert [result_or_log(r, worker) for r in results] == [2 * i for i in range(10)]
    late = [app.send_task("interop.slow_mul", args=(i, 3)) for i in range(5)]
    assert [result_or_log(r, worker) for r in late] == [3 * i for i in range(5)]
    echo = result_or_log(app.send_task("interop.echo", args=({"k": [1, 2]},)), worker)
    assert echo["payload"] == {"k": [1, 2]}
    assert echo["delivery_info"]["routing_key"] == f"{worker.prefix}.tasks"
    assert echo["delivery_info"]["redelivered"] is False
    assert time.monotonic() - started < 60


def test_celery_task_error_result(app, worker):
    result = app.send_task("interop.fail", args=("boom",))
    with pytest.raises(Exception) as excinfo:
        result_or_log(result, worker)
    assert type(excinfo.value).__name__ == "ValueError"
    assert "boom" in str(excinfo.value)
    assert result.state == "FAILURE"
    # The worker is still healthy after a failing task.
    assert result_or_log(app.send_task("interop.add", args=(1, 1)), worker) == 2
