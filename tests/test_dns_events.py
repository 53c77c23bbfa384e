"""Broken subscription events, caps, reconciliation without /v1/updates, and tasks that end.

A routed stand-in for Corrosion on loopback serves scripted NDJSON per endpoint; the subscriber
and the hints tasks run in-process exactly as `run_worker` starts them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jiji_dns import config as config_mod
from jiji_dns import subscriber as subscriber_mod
from jiji_dns import table as table_mod
from jiji_dns.events import Counters
from jiji_dns.hints import ChangeHints
from jiji_dns.main import run_worker
from jiji_dns.owner import TableOwner
from jiji_dns.server import bind_all
from jiji_dns.subscriber import Subscriber
from jiji_dns.table import COLUMNS

from tests import harness

COLS = list(COLUMNS)
Events = list[Any]


def row(cid: str, ip: str, service: str = "api") -> list[Any]:
    return [cid, service, "s-" + cid, ip, 1, "", "shop"]


def snapshot(*rows: list[Any], change_id: int = 1) -> Events:
    return [{"columns": COLS}, *({"row": [i, r]} for i, r in enumerate(rows, 1)), {"eoq": {"change_id": change_id}}]


class RoutedCorrosion:
    """Answers POST /v1/subscriptions with the next scripted stream (the last one repeats),
    resumes with `resumes`, /v1/updates with 404, /v1/queries with the next of `truths` (the
    last repeats; by default the rows of the last subscription stream served)."""

    def __init__(
        self, subscriptions: list[Events], resumes: list[Events] | None = None, truths: list[Events] | None = None
    ) -> None:
        self.subscriptions = subscriptions
        self.resumes = resumes or []
        self.truths = truths
        self.served: Events = []
        self.requests: list[str] = []
        self.times: list[float] = []  # when each request arrived (monotonic), as `requests`
        self.hold = 0.0  # seconds a stream stays open after its events

    def truth(self) -> Events:
        if self.truths:
            return self.truths.pop(0) if len(self.truths) > 1 else self.truths[0]
        rows = [e for e in self.served if isinstance(e, dict) and ("columns" in e or "row" in e)]
        return [*rows, {"eoq": {}}]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).decode().strip()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            self.requests.append(request_line)
            self.times.append(time.monotonic())
            method, path = request_line.split()[:2]
            if path.startswith("/v1/updates"):
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            elif path.startswith("/v1/queries"):
                await self._stream(writer, self.truth(), hold=False)
            elif method == "POST":
                events = self.subscriptions.pop(0) if len(self.subscriptions) > 1 else self.subscriptions[0]
                self.served = events
                await self._stream(writer, events, hold=True)
            elif self.resumes:
                await self._stream(writer, self.resumes.pop(0), hold=True)
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _stream(self, writer: asyncio.StreamWriter, events: Events, hold: bool) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncorro-query-id: sub-1\r\ntransfer-encoding: chunked\r\n\r\n")
        for event in events:
            data = (event if isinstance(event, bytes) else json.dumps(event).encode()) + b"\n"
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await writer.drain()
        if hold and self.hold:
            await asyncio.sleep(self.hold)
        writer.write(b"0\r\n\r\n")


def follow(
    node: RoutedCorrosion, until: Callable[[TableOwner, Counters], bool], timeout: float = 5.0, interval: str = "10"
) -> tuple[TableOwner, Counters, float]:
    """Run subscriber + hints against `node` until `until` holds; (tables, counters, seconds)."""

    async def main() -> tuple[TableOwner, Counters, float]:
        server = await asyncio.start_server(node.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg = config_mod.load(
            ["--listen", "127.0.0.1:5353", "--corrosion-api", f"127.0.0.1:{port}", "--reconnect-interval", interval]
        )
        counters = Counters()
        tables = TableOwner("jiji", 60, counters)
        hints = ChangeHints(cfg, tables, counters)
        sub = Subscriber(cfg, tables, counters, on_connected=hints.request_reconcile)
        tasks = [asyncio.ensure_future(t) for t in (sub.run(), hints.listen_loop(), hints.refresh_loop())]
        started = time.monotonic()
        while time.monotonic() - started < timeout and not until(tables, counters):
            for t in tasks:
                if t.done():
                    raise AssertionError(f"a task ended: {t.exception()!r}")
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - started
        sub.stop()
        hints.stop()
        for t in tasks:
            t.cancel()
        server.close()
        return tables, counters, elapsed

    return asyncio.run(main())


GOOD = snapshot(row("a", "10.210.0.2"), row("b", "10.210.0.3"))
WANT = {"shop-api.jiji": ["10.210.0.2", "10.210.0.3"]}

MALFORMED: dict[str, Events] = {
    "row with too few cells": [{"columns": COLS}, {"row": [1, ["a", "api"]]}, {"eoq": {}}],
    "row with too many cells": [{"columns": COLS}, {"row": [1, row("a", "10.210.0.2") + ["x"]]}, {"eoq": {}}],
    "row that is not a list": [{"columns": COLS}, {"row": "a,api,s1"}, {"eoq": {}}],
    "row values not a list": [{"columns": COLS}, {"row": [1, {"id": "a"}]}, {"eoq": {}}],
    "columns is a number": [{"columns": 5}, {"row": [1, row("a", "10.210.0.2")]}, {"eoq": {}}],
    "change missing fields": [*GOOD[:-1], {"eoq": {"change_id": 1}}, {"change": ["insert", 3]}],
    "change of unknown kind": [*GOOD, {"change": ["upsert", 3, row("c", "10.210.0.4"), 2]}],
    "change id not a number": [*GOOD, {"change": ["insert", 3, row("c", "10.210.0.4"), "2"]}],
    "change that is an object": [*GOOD, {"change": {"type": "insert"}}],
    "line that is not JSON": [{"columns": COLS}, b"{not json", {"eoq": {}}],
    "event that is a list": [[1, 2, 3], *GOOD],
    "eoq change id not a number": [{"columns": COLS}, {"row": [1, row("a", "10.210.0.2")]}, {"eoq": {"change_id": []}}],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_event_is_followed_by_a_correct_table_within_5_s(case: str) -> None:
    fixed = snapshot(row("a", "10.210.0.2"), row("b", "10.210.0.3"), change_id=9)
    node = RoutedCorrosion([MALFORMED[case], fixed])
    node.hold = 10
    tables, counters, elapsed = follow(
        node, lambda r, c: r.ready and r.table.names() == WANT and c.last_change_id == 9
    )
    assert tables.table.names() == WANT and counters.last_change_id == 9, case
    assert elapsed < 5
    assert counters.bad_events == 1 and counters.resyncs == 1


def test_a_bad_event_on_every_resync_backs_off(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(config_mod.random, "uniform", lambda a, b: 0.0)  # no jitter: exact waits
    node = RoutedCorrosion([MALFORMED["row with too few cells"]])

    def subscribes() -> list[float]:
        return [t for t, r in zip(node.times, node.requests, strict=True) if r.startswith("POST /v1/subscriptions")]

    # Three subscriptions: waits of 0.5 and 1 s between them by design.
    follow(node, lambda r, c: len(subscribes()) >= 3, timeout=1.5 + 10, interval="500")
    attempts = [line for line in capsys.readouterr().out.splitlines() if "event=subscription_bad_event" in line]
    assert "attempt=1 " in attempts[0] and "attempt=2 " in attempts[1]
    delays = [float(re.search(r"delay_s=([\d.]+)", line).group(1)) for line in attempts[:2]]  # type: ignore[union-attr]
    assert delays == [0.5, 1.0]  # doubling from --reconnect-interval, not fixed
    # ...and waited: each new subscription at least the announced wait after the last (a lower
    # bound only, which a slow machine cannot break).
    gaps = [b - a for a, b in zip(subscribes(), subscribes()[1:], strict=False)]
    assert all(gap >= delay - 0.01 for gap, delay in zip(gaps, delays, strict=False)), (gaps, delays)


def test_a_snapshot_over_the_row_cap_is_refused_and_logged(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(table_mod, "MAX_ROWS", 100)
    big = snapshot(*(row(f"c{i}", f"10.210.0.{i % 250 + 2}", f"s{i}") for i in range(150)))
    tables, counters, _ = follow(RoutedCorrosion([big]), lambda r, c: c.bad_events >= 1, timeout=3)
    assert not tables.ready and len(tables.table.containers) == 0
    assert "row cap" in capsys.readouterr().out


def test_live_inserts_past_the_row_cap_are_refused_and_logged(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(table_mod, "MAX_ROWS", 10)
    events = snapshot(*(row(f"c{i}", f"10.210.0.{i + 2}", f"s{i}") for i in range(10)), change_id=1)
    events += [{"change": ["insert", 20 + i, row(f"n{i}", "10.210.1.2", f"n{i}"), 2 + i]} for i in range(5)]
    node = RoutedCorrosion([events])
    node.hold = 10
    tables, counters, _ = follow(node, lambda r, c: c.last_change_id == 6)
    assert len(tables.table.containers) == 10 and counters.rows_refused == 5
    assert "event=row_cap" in capsys.readouterr().out


def test_bad_ips_and_huge_cells_are_logged(capsys: pytest.CaptureFixture[str]) -> None:
    events = snapshot(row("a", "10.210.0.2"), row("b", "not-an-ip"), row("c" * 300, "10.210.0.4"))
    node = RoutedCorrosion([events])
    node.hold = 10
    tables, _, _ = follow(node, lambda r, c: r.ready)
    out = capsys.readouterr().out
    assert "event=bad_ip id=b ip=not-an-ip" in out and "event=row_refused" in out
    assert tables.table.names() == {"shop-api.jiji": ["10.210.0.2", "not-an-ip"]}
    assert set(tables.table.containers) == {"a", "b"}


def test_reconcile_runs_when_the_node_has_no_v1_updates() -> None:
    # The node has no /v1/updates (404). A delete made while we were disconnected never comes as
    # a change on the resumed stream; only the re-read after the resume can remove it.
    both = [{"columns": COLS}, {"row": [1, row("a", "10.210.0.2")]}, {"row": [2, row("b", "10.210.0.3")]}, {"eoq": {}}]
    only_a = [{"columns": COLS}, {"row": [1, row("a", "10.210.0.2")]}, {"eoq": {}}]
    node = RoutedCorrosion(
        [snapshot(row("a", "10.210.0.2"), row("b", "10.210.0.3"), change_id=4)], resumes=[[]], truths=[both, only_a]
    )
    node.hold = 0.3  # the first stream ends (a disconnect), the resumed one stays open

    def resumed_and_fixed(r: TableOwner, c: Counters) -> bool:
        resumed = any(q.startswith("GET /v1/subscriptions/sub-1?from=4") for q in node.requests)
        return resumed and r.table.names() == {"shop-api.jiji": ["10.210.0.2"]}

    tables, counters, _ = follow(node, resumed_and_fixed)
    assert resumed_and_fixed(tables, counters)
    assert counters.reconciled >= 1 and counters.resyncs == 0


def test_a_subscriber_that_ends_ends_the_worker_non_zero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def broken(self: Subscriber) -> None:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(Subscriber, "run", broken)
    port = harness.free_dns_port()
    cfg = config_mod.load(
        ["--listen", f"127.0.0.1:{port}", "--corrosion-api", "127.0.0.1:9", "--stats-socket", "none", "--workers", "1"]
    )
    code = asyncio.run(asyncio.wait_for(run_worker(cfg, bind_all(cfg.listen), lambda: None), 10))
    assert code == 1
    assert "event=fatal task=subscriber error=\"RuntimeError: unexpected\"" in capsys.readouterr().out


def test_a_reconciler_that_ends_ends_the_worker_non_zero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def ends(self: ChangeHints) -> None:
        return None

    monkeypatch.setattr(ChangeHints, "refresh_loop", ends)
    port = harness.free_dns_port()
    cfg = config_mod.load(
        ["--listen", f"127.0.0.1:{port}", "--corrosion-api", "127.0.0.1:9", "--stats-socket", "none", "--workers", "1"]
    )
    assert asyncio.run(asyncio.wait_for(run_worker(cfg, bind_all(cfg.listen), lambda: None), 10)) == 1
    assert "event=fatal task=reconciler error=ended" in capsys.readouterr().out


def test_a_worker_killed_ends_the_daemon_non_zero(pyz: Path, workdir: Path, corrosion: harness.CorrosionNode) -> None:
    d = harness.DnsDaemon(pyz, workdir, corrosion.api, workers=2)
    try:
        d.wait_ready()
        pids = d.pids()
        assert len(pids) == 2 and d.proc.pid not in pids
        os.kill(pids[1], signal.SIGKILL)
        assert d.proc.wait(15) != 0
        harness.wait_until(lambda: not Path(f"/proc/{pids[0]}").exists(), 15, "the other worker to stop")
        assert "event=fatal reason=\"a worker ended\"" in d.log()
    finally:
        d.close()


def test_a_snapshot_that_stalls_is_given_up_and_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    # klukai was seen accepting concurrent subscriptions to a new query and sending no rows.
    monkeypatch.setattr(subscriber_mod, "SNAPSHOT_IDLE", 0.5)
    node = RoutedCorrosion([[{"columns": COLS}], GOOD])
    node.hold = 30
    # Given up after 0.5 s of silence, not after the stream's 30 s: 10 s lies between the two.
    tables, counters, _ = follow(node, lambda r, c: r.ready and r.table.names() == WANT, timeout=10)
    assert tables.table.names() == WANT
    assert counters.reconnects == 1
