"""The subscriber's rules on scripted NDJSON streams (v1 and v0 shapes), over real HTTP on loopback.

The real-node tests cover what Corrosion does; these pin down what a node may do that ours
rarely shows: a resumed subscription that silently skips change ids (upstream v1 behaviour),
and the v0 event shapes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jiji_dns import config as config_mod
from jiji_dns.events import Counters
from jiji_dns.hints import ChangeHints
from jiji_dns.owner import TableOwner
from jiji_dns.rows import RowReader
from jiji_dns.subscriber import Subscriber
from jiji_dns.table import COLUMNS

COLS = list(COLUMNS)


def row(cid: str, ip: str, service: str = "api") -> list[Any]:
    return [cid, service, "s-" + cid, ip, 1, "", "shop"]


class ScriptedCorrosion:
    """Serves one scripted response per request, recording the request lines it saw."""

    def __init__(self, scripts: list[tuple[int, list[dict[str, Any]]]]) -> None:
        self.scripts = scripts
        self.requests: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line = (await reader.readline()).decode().strip()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        self.requests.append(request_line)
        status, events = self.scripts.pop(0) if self.scripts else (500, [])
        writer.write(f"HTTP/1.1 {status} X\r\ncorro-query-id: sub-1\r\ntransfer-encoding: chunked\r\n\r\n".encode())
        for event in events:
            data = json.dumps(event).encode() + b"\n"
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()


def run_subscriber(
    scripts: list[tuple[int, list[dict[str, Any]]]], until: Any
) -> tuple[TableOwner, Counters, list[str]]:
    async def main() -> tuple[TableOwner, Counters, list[str]]:
        fake = ScriptedCorrosion(scripts)
        server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg = config_mod.load(
            [
                "--listen",
                "127.0.0.1:5353",
                "--corrosion-api",
                f"127.0.0.1:{port}",
                "--reconnect-interval",
                "10",
                "--upstream",
                "127.0.0.1:9",
            ]
        )
        counters = Counters()
        tables = TableOwner("jiji", 60, counters)
        sub = Subscriber(cfg, tables, counters)
        task = asyncio.ensure_future(sub.run())
        for _ in range(300):
            if until(tables, counters, fake):
                break
            await asyncio.sleep(0.01)
        sub.stop()
        task.cancel()
        server.close()
        return tables, counters, fake.requests

    return asyncio.run(main())


def test_v1_resume_with_a_gap_throws_the_cache_away() -> None:
    first = [
        {"columns": COLS},
        {"row": [1, row("a", "10.210.0.2")]},
        {"row": [2, row("b", "10.210.0.3")]},
        {"eoq": {"time": 0.1, "change_id": 7}},
        {"change": ["insert", 3, row("c", "10.210.0.4"), 8]},
    ]
    resumed_with_gap = [{"change": ["delete", 1, row("a", "10.210.0.2"), 20]}]
    fresh = [{"columns": COLS}, {"row": [2, row("b", "10.210.0.3")]}, {"eoq": {"time": 0.1, "change_id": 30}}]
    tables, counters, requests = run_subscriber(
        [(200, first), (200, resumed_with_gap), (200, fresh)],
        lambda r, c, f: len(f.requests) == 3 and c.last_change_id == 30,
    )
    assert requests[0].startswith("POST /v1/subscriptions ")
    assert requests[1] == "GET /v1/subscriptions/sub-1?from=8 HTTP/1.1"
    assert requests[2].startswith("POST /v1/subscriptions ")
    assert counters.resyncs == 1
    assert tables.table.names() == {"shop-api.jiji": ["10.210.0.3"]}  # 'c' was dropped with the old cache


def test_v1_contiguous_resume_keeps_the_cache() -> None:
    first = [{"columns": COLS}, {"row": [1, row("a", "10.210.0.2")]}, {"eoq": {"time": 0.1, "change_id": 4}}]
    resumed = [
        {"change": ["insert", 2, row("b", "10.210.0.3"), 5]},
        {"change": ["delete", 1, row("a", "10.210.0.2"), 6]},
    ]
    tables, counters, requests = run_subscriber(
        [(200, first), (200, resumed)], lambda r, c, f: c.last_change_id == 6
    )
    assert counters.resyncs == 0
    assert requests[1].endswith("?from=4 HTTP/1.1")
    assert tables.table.names() == {"shop-api.jiji": ["10.210.0.3"]}


def test_vanished_subscription_resubscribes_from_scratch() -> None:
    first = [{"columns": COLS}, {"row": [1, row("a", "10.210.0.2")]}, {"eoq": {"time": 0.1, "change_id": 4}}]
    fresh = [{"columns": COLS}, {"eoq": {"time": 0.1, "change_id": 1}}]
    tables, counters, requests = run_subscriber(
        [(200, first), (404, []), (200, fresh)], lambda r, c, f: len(f.requests) == 3 and c.last_change_id == 1
    )
    assert counters.resyncs == 1 and tables.table.names() == {}


def test_v0_shapes_without_change_ids() -> None:
    events = [
        {"columns": COLS},
        {"row": [1, row("a", "10.210.0.2")]},
        {"eoq": {"time": 0.1}},
        {"change": ["insert", 2, row("b", "10.210.0.3")]},
        {"change": ["update", 2, row("b", "10.210.0.9")]},
    ]
    tables, counters, _ = run_subscriber(
        [(200, events)], lambda r, c, f: r.table.names().get("shop-api.jiji") == ["10.210.0.2", "10.210.0.9"]
    )
    assert tables.ready
    assert tables.table.names() == {"shop-api.jiji": ["10.210.0.2", "10.210.0.9"]}
    assert counters.last_change_id is None


def test_rows_are_served_only_once_the_snapshot_is_complete() -> None:
    partial = [{"columns": COLS}, {"row": [1, row("a", "10.210.0.2")]}]  # stream ends before eoq
    tables, counters, _ = run_subscriber([(200, partial)], lambda r, c, f: c.reconnects >= 1)
    assert not tables.ready and tables.table.names() == {}


def test_a_bug_in_a_row_handler_ends_the_subscriber_instead_of_reconnecting(monkeypatch: Any) -> None:
    """Only a broken stream is a reason to reconnect: a KeyError of ours must surface (the
    daemon then exits with event=fatal), not be retried for ever as if the node had hung up."""

    def buggy(self: Any, body: Any) -> None:
        raise KeyError("a bug in the row handler")

    monkeypatch.setattr(RowReader, "row", buggy)
    events = [{"columns": COLS}, {"row": [1, row("a", "10.210.0.2")]}, {"eoq": {"time": 0.1, "change_id": 1}}]

    async def main() -> tuple[BaseException | None, Counters]:
        fake = ScriptedCorrosion([(200, events)] * 3)
        server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg = config_mod.load(
            ["--listen", "127.0.0.1:5353", "--corrosion-api", f"127.0.0.1:{port}", "--reconnect-interval", "10"]
        )
        counters = Counters()
        sub = Subscriber(cfg, TableOwner("jiji", 60, counters), counters)
        task = asyncio.ensure_future(sub.run())
        await asyncio.wait({task}, timeout=3)
        sub.stop()
        task.cancel()
        server.close()
        return (task.exception() if task.done() and not task.cancelled() else None), counters

    error, counters = asyncio.run(main())
    assert isinstance(error, KeyError), error
    assert counters.reconnects == 0 and counters.resyncs == 0


def test_a_bug_in_a_row_handler_ends_the_reconciler_instead_of_retrying(monkeypatch: Any) -> None:
    def buggy(self: Any, body: Any) -> None:
        raise KeyError("a bug in the row handler")

    monkeypatch.setattr(RowReader, "row", buggy)
    events = [{"columns": COLS}, {"row": [1, row("a", "10.210.0.2")]}, {"eoq": {"time": 0.1}}]

    async def main() -> BaseException | None:
        fake = ScriptedCorrosion([(200, events)] * 3)
        server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg = config_mod.load(
            ["--listen", "127.0.0.1:5353", "--corrosion-api", f"127.0.0.1:{port}", "--reconnect-interval", "10"]
        )
        counters = Counters()
        tables = TableOwner("jiji", 60, counters)
        tables.replace([])
        hints = ChangeHints(cfg, tables, counters)
        hints.request_reconcile()
        task = asyncio.ensure_future(hints.refresh_loop())
        await asyncio.wait({task}, timeout=3)
        hints.stop()
        task.cancel()
        server.close()
        return task.exception() if task.done() and not task.cancelled() else None

    assert isinstance(asyncio.run(main()), KeyError)
