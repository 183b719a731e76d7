"""Shared fixtures for the Python interop scenarios: broker address, unique names, clean-up, xfail.

Every test is one scenario driven by one client. Its id is `CLIENT:SCENARIO`, taken from the
module name (`test_pika.py` -> `pika`) and the function name (`test_basic_get` -> `basic_get`),
so `interop/xfail-warren.txt` and `interop/SCENARIOS.md` can name it the same way in every
language.
"""

from __future__ import annotations

import os
import secrets
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest

# The Python clients this directory drives; xfail lines for other clients belong to node/.
PYTHON_CLIENTS = {"pika", "aio_pika", "kombu", "celery"}


@dataclass(frozen=True)
class Broker:
    """Where the broker under test is, parsed once so every client gets the same explicit values.

    Clients disagree on how to read a URL's path (is `amqp://h/` the vhost "" or "/"?), so the
    suite parses AMQP_URL itself: an empty path means the default vhost "/".
    """

    host: str
    port: int
    user: str
    password: str
    vhost: str

    @classmethod
    def from_url(cls, url: str) -> "Broker":
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "amqp":
            raise ValueError(f"AMQP_URL must be amqp://...: {url!r}")
        vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5672,
            user=urllib.parse.unquote(parts.username or "guest"),
            password=urllib.parse.unquote(parts.password or "guest"),
            vhost=vhost,
        )

    def url(self, query: str = "") -> str:
        """A URL with the vhost percent-encoded, which every client reads the same way."""
        quote = urllib.parse.quote
        base = (
            f"amqp://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(self.vhost, safe='')}"
        )
        return f"{base}?{query}" if query else base

    def pika_params(self, **overrides) -> pika.ConnectionParameters:
        options = dict(
            host=self.host,
            port=self.port,
            virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.user, self.password),
            # A broker that accepts TCP but never answers must fail the test quickly, not hang it.
            socket_timeout=5,
            stack_timeout=10,
            blocked_connection_timeout=10,
            connection_attempts=1,
            heartbeat=60,
        )
        options.update(overrides)
        return pika.ConnectionParameters(**options)


BROKER = Broker.from_url(os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))


def scenario_id(item: pytest.Item) -> str:
    client = Path(str(item.fspath)).stem.removeprefix("test_")
    scenario = item.originalname.removeprefix("test_") if hasattr(item, "originalname") else item.name
    return f"{client}:{scenario}"


def read_xfail_list(path: str) -> dict[str, str]:
    """`ID REASON...` per line; blank lines and `#` comments ignored."""
    entries: dict[str, str] = {}
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        ident, _, reason = line.partition(" ")
        entries[ident] = reason.strip() or "listed in xfail file"
    return entries


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    """Apply the broker's expected-failure list as strict xfail, so the list can only stay true:
    a listed scenario that passes (XPASS) fails the run, and so does a listed id that names no
    scenario."""
    path = os.environ.get("INTEROP_XFAIL")
    if not path:
        return
    expected = {
        ident: reason
        for ident, reason in read_xfail_list(path).items()
        if ident.split(":", 1)[0] in PYTHON_CLIENTS
    }
    seen = set()
    for item in items:
        ident = scenario_id(item)
        if ident in expected:
            seen.add(ident)
            item.add_marker(pytest.mark.xfail(reason=expected[ident], strict=True))
    unknown = sorted(set(expected) - seen)
    if unknown:
        raise pytest.UsageError(f"{path} lists scenarios that do not exist: {', '.join(unknown)}")


def pytest_runtest_logreport(report):
    """With INTEROP_RECORD set, write `ID first-line-of-error` for each failure (run.sh
    --record-xfail turns these into the xfail list)."""
    record = os.environ.get("INTEROP_RECORD")
    if not record or not report.failed or getattr(report, "wasxfail", None) is not None:
        return
    message = ""
    if report.longrepr is not None:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(report.longrepr)
    first = " ".join(message.strip().splitlines()[:1])[:160] or "failed"
    client = Path(report.fspath).stem.removeprefix("test_")
    scenario = report.nodeid.split("::")[-1].split("[")[0].removeprefix("test_")
    with open(record, "a", encoding="utf-8") as out:
        out.write(f"{client}:{scenario} {first}\n")


@pytest.fixture
def broker() -> Broker:
    return BROKER


class Names:
    """Unique queue and exchange names for one test (`interop.<test>.<random>`), deleted at the
    end of the test whether it passed or not, through a connection of its own."""

    def __init__(self, test_name: str):
        self.prefix = f"interop.{test_name}.{secrets.token_hex(4)}"
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def queue(self, label: str = "q") -> str:
        name = f"{self.prefix}.{label}"
        self.queues.append(name)
        return name

    def exchange(self, label: str = "x") -> str:
        name = f"{self.prefix}.{label}"
        self.exchanges.append(name)
        return name

    def cleanup(self) -> None:
        if not self.queues and not self.exchanges:
            return
        try:
            connection = pika.BlockingConnection(BROKER.pika_params(stack_timeout=5))
        except Exception:
            return  # the broker is gone; nothing to clean
        try:
            for kind, names in (("queue", self.queues), ("exchange", self.exchanges)):
                for name in names:
                    # A delete on a missing object is a no-op in RabbitMQ 3.x, but a broker under
                    # test may close the channel: use a fresh one per delete.
                    try:
                        channel = connection.channel()
                        if kind == "queue":
                            channel.queue_delete(name)
                        else:
                            channel.exchange_delete(name)
                        channel.close()
                    except Exception:
                        if not connection.is_open:
                            return
        finally:
            try:
                connection.close()
            except Exception:
                pass


@pytest.fixture
def names(request) -> Names:
    created = Names(request.node.originalname.removeprefix("test_"))
    yield created
    created.cleanup()
