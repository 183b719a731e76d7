"""Celery end to end: a real worker (a subprocess, bounded in time) consumes tasks through the
broker with kombu/py-amqp and sends results back with the rpc:// result backend.

The worker runs with Celery's defaults (mingle, gossip, heartbeats, remote control on), so it
also exercises the fanout pidbox, the topic event exchange and their auto-delete queues with
x-message-ttl/x-expires arguments. Only the pool is `solo`, to keep the run light on 2 cores.
"""

from __future__ import annotations

import os
import secrets
import shutil
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
    def __init__(self, prefix: str | None = None, node: str = "w", extra_args: tuple = ()):
        self.prefix = prefix or f"interop.celery.{secrets.token_hex(4)}"
        self.node = f"{self.prefix}.{node}@localhost"
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
                "--pool=solo", "--loglevel=INFO", "-n", self.node, *extra_args,
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
        names.queues += [f"{self.prefix}.tasks", f"{self.node}.{self.prefix}.ctl.pidbox"]
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


def wait_for_file(path: Path, worker: Worker, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if worker.process.poll() is not None:
            raise AssertionError(f"celery worker exited with {worker.process.returncode}:\n{worker.output()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} not written within {seconds} s:\n{worker.output()[-4000:]}")
        time.sleep(0.05)


@pytest.fixture
def marker_dir():
    path = Path(tempfile.mkdtemp(prefix="interop-celery-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_celery_worker_prefetch_respected(marker_dir):
    # Concurrency 1 x multiplier 1: the worker asks basic.qos(1), so with acks_late it holds one
    # task and the other two stay ready in the queue.
    worker = Worker(extra_args=("--concurrency=1", "--prefetch-multiplier=1"))
    app = make_app(BROKER.url(), worker.prefix)
    try:
        results = [app.send_task("interop.hold", args=(str(marker_dir), 1.0)) for _ in range(3)]
        wait_for_file(marker_dir / "attempt-1", worker)
        with app.connection_for_write() as connection:
            _name, ready, consumers = connection.default_channel.queue_declare(
                f"{worker.prefix}.tasks", passive=True
            )
        assert (ready, consumers) == (2, 1)
        outcomes = [result_or_log(r, worker) for r in results]
        assert [o["attempt"] for o in outcomes] == [1, 2, 3]
    finally:
        app.close()
        worker.stop()


def test_celery_acks_late_redelivered_after_worker_crash(marker_dir):
    # A worker killed mid-task never acked it (acks_late): the broker requeues the message when
    # the connection drops, and the next worker runs it again, flagged redelivered.
    first = Worker(node="a", extra_args=("--concurrency=1", "--prefetch-multiplier=1"))
    app = make_app(BROKER.url(), first.prefix)
    second = None
    try:
        result = app.send_task("interop.hold", args=(str(marker_dir), 60.0))
        wait_for_file(marker_dir / "attempt-1", first)
        first.process.kill()
        first.process.wait(timeout=10)
        second = Worker(prefix=first.prefix, node="b")
        assert result_or_log(result, second) == {"attempt": 2, "redelivered": True}
    finally:
        app.close()
        if second is not None:
            second.stop()
        first.stop()
