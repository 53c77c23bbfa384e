"""Which klukai matcher serves each subscriber: its own, and never again one that sent nothing.

klukai keeps one matcher per SQL text and gives every subscription to that text the matcher's id;
a matcher whose initial query never completes keeps its subscribers waiting for ever (issue 23;
the cause is in jiji_dns.subscriber.tagged_sql). `MatcherNode` is a loopback stand-in for that
keying: it remembers each text it was asked for, and a text it has made silent answers every
later POST with the same id and no row, as klukai does. The real-node tests at the end check the
keying this design relies on against the klukai we run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from jiji_dns import config as config_mod
from jiji_dns import subscriber as subscriber_mod
from jiji_dns.events import Counters
from jiji_dns.owner import TableOwner
from jiji_dns.subscriber import Subscriber, tagged_sql
from jiji_dns.table import COLUMNS

from tests import harness

ROWS = [["a", "api", "s1", "10.210.0.2", 1, "", "shop"], ["b", "api", "s2", "10.210.1.2", 1, "", "shop"]]
WANT = {"shop-api.jiji": ["10.210.0.2", "10.210.1.2"]}


class MatcherNode:
    """POST /v1/subscriptions keyed by the exact SQL text, like klukai's SubsManager.

    `silent(text, nth)` decides, when a text is first asked for (nth = how many matchers were
    made before it), whether its matcher is one that never sends a row; `concurrent_attach_silent`
    makes a text silent for whoever asks for it while its first subscriber is still being sent
    its snapshot (the stall issue 23 reports for workers that subscribe at once). /v1/queries
    answers the rows, /v1/updates 404 (reconciliation runs without hints)."""

    def __init__(self, silent: Any = None, concurrent_attach_silent: bool = False, snapshot_s: float = 0.0) -> None:
        self.silent_rule = silent or (lambda text, nth: False)
        self.concurrent_attach_silent = concurrent_attach_silent
        self.snapshot_s = snapshot_s
        self.matchers: dict[str, tuple[str, bool]] = {}  # text -> (id, silent)
        self.building: set[str] = set()
        self.posts: list[str] = []  # every subscription text, in arrival order
        self.lock = threading.Lock()

    # -- the protocol --------------------------------------------------------------------------
    def subscribe(self, text: str) -> tuple[str, bool]:
        """(matcher id, whether this subscriber will get rows)."""
        with self.lock:
            self.posts.append(text)
            if text in self.matchers:
                mid, silent = self.matchers[text]
                if self.concurrent_attach_silent and text in self.building:
                    self.matchers[text] = (mid, True)
                    return mid, False
                return mid, not silent
            mid = f"m{len(self.matchers)}"
            silent = bool(self.silent_rule(text, len(self.matchers)))
            self.matchers[text] = (mid, silent)
            if not silent:
                self.building.add(text)
            return mid, not silent

    def built(self, text: str) -> None:
        with self.lock:
            self.building.discard(text)

    # -- asyncio server (in-process tests) -----------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).decode()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length)
            for chunk in self.respond(request_line, body):
                if chunk is None:
                    await asyncio.sleep(3600)  # silence: the client gives up first
                elif isinstance(chunk, float):
                    await asyncio.sleep(chunk)
                else:
                    writer.write(chunk)
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def respond(self, request_line: str, body: bytes) -> Any:
        """The response as chunks of bytes; None is silence for ever, a float a pause."""
        method, path = request_line.split()[:2]
        if path.startswith("/v1/updates"):
            yield b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
            return
        if path.startswith("/v1/queries"):
            yield b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            yield from (_chunk(e) for e in [{"columns": list(COLUMNS)}, *({"row": [i, r]} for i, r in enumerate(ROWS))])
            yield _chunk({"eoq": {"time": 0.0}}) + b"0\r\n\r\n"
            return
        if method != "POST" or not path.startswith("/v1/subscriptions"):
            yield b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
            return
        text = json.loads(body)
        mid, rows = self.subscribe(text)
        yield f"HTTP/1.1 200 OK\r\ncorro-query-id: {mid}\r\ntransfer-encoding: chunked\r\n\r\n".encode()
        if not rows:
            yield None
            return
        yield _chunk({"columns": list(COLUMNS)})
        if self.snapshot_s:
            yield self.snapshot_s
        yield b"".join(_chunk({"row": [i + 1, r]}) for i, r in enumerate(ROWS))
        yield _chunk({"eoq": {"time": 0.0, "change_id": 0}})
        self.built(text)
        yield 3600.0  # a live stream: quiet, open


def _chunk(event: Any) -> bytes:
    data = json.dumps(event).encode() + b"\n"
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def base_of(text: str) -> str:
    """The SQL without our trailing tag comment (the text itself when it has none)."""
    return re.sub(r" /\* jiji-dns [0-9a-f]+ \*/$", "", text)


def follow(node: MatcherNode, timeout: float, interval_ms: int = 10) -> tuple[TableOwner, Counters, float]:
    """One subscriber (as a worker runs it) against `node` until ready or `timeout`."""

    async def main() -> tuple[TableOwner, Counters, float]:
        server = await asyncio.start_server(node.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg = config_mod.load(
            [
                "--listen",
                "127.0.0.1:5353",
                "--corrosion-api",
                f"127.0.0.1:{port}",
                "--reconnect-interval",
                str(interval_ms),
            ]
        )
        counters = Counters()
        tables = TableOwner("jiji", 60, counters)
        sub = Subscriber(cfg, tables, counters)
        task = asyncio.ensure_future(sub.run())
        started = time.monotonic()
        while time.monotonic() - started < timeout and not tables.ready and not task.done():
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - started
        sub.stop()
        task.cancel()
        server.close()
        return tables, counters, elapsed

    return asyncio.run(main())


# The stall watchdog shortened for the in-process tests (the daemon's own is 10 s).
IDLE = 0.5
# Deadline after one silent matcher: the watchdog's silence (IDLE), the reconnect delay (10 ms
# interval + up to half of it as jitter, config.reconnect_delay) and a snapshot of two rows
# (instant here), plus 1.5 s for a loaded machine.
ONE_STALL = IDLE + 0.015 + 1.5


def test_a_matcher_that_sent_nothing_is_never_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subscriber_mod, "SNAPSHOT_IDLE", IDLE)
    node = MatcherNode(silent=lambda text, nth: nth == 0)  # the first matcher made stays silent
    tables, counters, elapsed = follow(node, timeout=ONE_STALL + 3)
    assert tables.ready and tables.table.names() == WANT, f"not ready; {len(node.posts)} subscriptions sent"
    assert elapsed < ONE_STALL
    silent = [t for t, (_, s) in node.matchers.items() if s]
    assert len(silent) == 1 and node.posts.count(silent[0]) == 1, "the silent matcher's text was sent again"
    assert counters.subscriptions_abandoned == 1
    assert {base_of(t) for t in node.posts} == {config_mod.SUBSCRIPTION_SQL}


def test_several_silent_matchers_in_a_row_are_each_left_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subscriber_mod, "SNAPSHOT_IDLE", IDLE)
    node = MatcherNode(silent=lambda text, nth: nth < 3)
    tables, counters, elapsed = follow(node, timeout=3 * ONE_STALL + 3)
    assert tables.ready, f"not ready; {len(node.posts)} subscriptions sent, {len(set(node.posts))} texts"
    assert elapsed < 3 * ONE_STALL
    assert len(node.posts) == len(set(node.posts)) == 4
    assert counters.subscriptions_abandoned == 3


def test_a_stream_that_breaks_before_its_snapshot_also_changes_matcher(monkeypatch: pytest.MonkeyPatch) -> None:
    # An error event instead of rows (klukai sends one when a matcher's initial query fails, and
    # keeps the matcher): the next subscription must not attach to it.
    monkeypatch.setattr(subscriber_mod, "SNAPSHOT_IDLE", IDLE)
    node = MatcherNode()
    failed: set[str] = set()
    plain = node.respond

    def respond(request_line: str, body: bytes) -> Any:
        if request_line.startswith("POST /v1/subscriptions") and not failed:
            text = json.loads(body)
            failed.add(text)
            with node.lock:
                node.posts.append(text)
                node.matchers[text] = ("m-err", True)  # kept, never running: silent from now on
            yield b"HTTP/1.1 200 OK\r\ncorro-query-id: m-err\r\ntransfer-encoding: chunked\r\n\r\n"
            yield _chunk({"columns": list(COLUMNS)}) + _chunk({"error": "database is locked"}) + b"0\r\n\r\n"
            return
        yield from plain(request_line, body)

    monkeypatch.setattr(node, "respond", respond)
    tables, counters, elapsed = follow(node, timeout=ONE_STALL + 3)
    assert tables.ready, f"not ready; subscriptions sent: {len(node.posts)}"
    assert elapsed < ONE_STALL
    assert node.posts[0] in failed and node.posts.count(node.posts[0]) == 1
    assert counters.subscriptions_abandoned == 1


def scripted_first_post(node: MatcherNode, first: list[Any]) -> Any:
    """`node.respond` with the first subscription answered by `first` (chunks as in respond) and
    its text's matcher kept as m-first, alive: later POSTs of that text get the snapshot."""
    plain = node.respond
    done: list[str] = []

    def respond(request_line: str, body: bytes) -> Any:
        if request_line.startswith("POST /v1/subscriptions") and not done:
            text = json.loads(body)
            done.append(text)
            with node.lock:
                node.posts.append(text)
                node.matchers[text] = ("m-first", False)
            yield b"HTTP/1.1 200 OK\r\ncorro-query-id: m-first\r\ntransfer-encoding: chunked\r\n\r\n"
            yield from first
            return
        yield from plain(request_line, body)

    return respond


def test_a_snapshot_cut_while_arriving_is_asked_again_of_the_same_matcher(monkeypatch: pytest.MonkeyPatch) -> None:
    # klukai ends a subscriber's stream without a word when it falls 10,240 events behind its
    # matcher; the matcher is fine, and attaching to it again is served with back-pressure.
    node = MatcherNode()
    cut = [_chunk({"columns": list(COLUMNS)}) + _chunk({"row": [1, ROWS[0]]}) + b"0\r\n\r\n"]
    monkeypatch.setattr(node, "respond", scripted_first_post(node, cut))
    # Deadline: the reconnect delay (10 ms + up to 1 s of jitter) and an instant snapshot, +1 s.
    tables, counters, elapsed = follow(node, timeout=5)
    assert tables.ready and tables.table.names() == WANT
    assert elapsed < 0.01 + 1.0 + 1.0
    assert len(node.posts) == 2 and node.posts[0] == node.posts[1], "a working matcher was abandoned"
    assert counters.subscriptions_abandoned == 0


def test_a_matcher_that_goes_silent_after_some_rows_is_abandoned(monkeypatch: pytest.MonkeyPatch) -> None:
    # The deadlock of tagged_sql leaves the first subscriber with the rows of one budget (63 or
    # 127) and then nothing: silence is a stuck matcher, rows or not.
    monkeypatch.setattr(subscriber_mod, "SNAPSHOT_IDLE", IDLE)
    node = MatcherNode()
    stalled = [_chunk({"columns": list(COLUMNS)}) + _chunk({"row": [1, ROWS[0]]}), None]
    monkeypatch.setattr(node, "respond", scripted_first_post(node, stalled))
    tables, counters, elapsed = follow(node, timeout=ONE_STALL + 3)
    assert tables.ready and tables.table.names() == WANT
    assert elapsed < ONE_STALL
    assert len(node.posts) == 2 and node.posts[0] != node.posts[1], "the silent matcher was asked again"
    assert counters.subscriptions_abandoned == 1


def test_a_reconnect_after_a_snapshot_keeps_the_same_matcher() -> None:
    # A matcher that delivered is worth keeping: a later fresh subscription asks for it again.
    node = MatcherNode()

    async def main() -> list[str]:
        server = await asyncio.start_server(node.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg = config_mod.load(["--listen", "127.0.0.1:5353", "--corrosion-api", f"127.0.0.1:{port}"])
        counters = Counters()
        tables = TableOwner("jiji", 60, counters)
        sub = Subscriber(cfg, tables, counters)
        for _ in range(2):
            task = asyncio.ensure_future(sub._subscribe())
            deadline = time.monotonic() + 5
            while not tables.ready and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert tables.ready
            tables.ready = False
        server.close()
        return node.posts

    posts = asyncio.run(main())
    assert len(posts) == 2 and posts[0] == posts[1]


class ThreadedNode:
    """`MatcherNode` served from a thread (for a daemon in another process)."""

    def __init__(self, node: MatcherNode) -> None:
        self.node = node
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.port = 0

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            server = self.loop.run_until_complete(asyncio.start_server(node.handle, "127.0.0.1", 0))
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            self.loop.run_forever()
            server.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(5)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.mark.parametrize("workers", [2, 4])
def test_workers_that_start_together_each_get_their_own_matcher(pyz: Path, workdir: Path, workers: int) -> None:
    # Whoever asks for a text while its first subscriber is still being sent the snapshot gets
    # the id and no row (the stall of issue 23). Workers with their own texts never meet it.
    node = MatcherNode(concurrent_attach_silent=True, snapshot_s=0.5)
    served = ThreadedNode(node)
    d = harness.DnsDaemon(pyz, workdir, f"127.0.0.1:{served.port}", workers=workers)
    try:
        # No stall means ready without any watchdog expiry: well inside the 10 s SNAPSHOT_IDLE a
        # stall would cost (0.5 s snapshot, process start, and 2 s for a loaded machine).
        harness.wait_until(lambda: d.stats()["ready"], subscriber_mod.SNAPSHOT_IDLE, f"{workers} workers ready")
        stats = d.stats()
        with node.lock:
            posts = list(node.posts)
        assert len(set(posts)) == len(posts) == workers, posts
        assert {base_of(t) for t in posts} == {config_mod.SUBSCRIPTION_SQL}
        assert stats["subscriptions_abandoned"] == 0
        assert len({w["subscription_id"] for w in stats["workers"]}) == workers
    finally:
        d.close()
        served.close()


# ---- the real klukai ---------------------------------------------------------------------------
def _subscribe(api: str, text: str, rows_wanted: int, timeout: float = 10) -> tuple[str, list[Any]]:
    """POST a subscription and read it until its eoq: (matcher id, rows)."""
    req = urllib.request.Request(
        f"http://{api}/v1/subscriptions",
        data=json.dumps(text).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        mid = resp.headers["corro-query-id"]
        rows = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = json.loads(resp.readline())
            if "row" in event:
                rows.append(event["row"][1])
            elif "eoq" in event:
                return mid, rows
            elif "error" in event:
                raise RuntimeError(event["error"])
    raise TimeoutError(f"no eoq from {mid} in {timeout} s ({len(rows)} of {rows_wanted} rows)")


@pytest.fixture
def node(workdir: Path, request: pytest.FixtureRequest) -> Any:
    n = harness.CorrosionNode(workdir / f"corrosion-{request.node.name}-{os.getpid()}")
    yield n
    n.close()


def test_klukai_keys_matchers_by_the_text_so_the_tag_gives_each_its_own(node: harness.CorrosionNode) -> None:
    """The premise of the design, on the klukai we run: the same text shares a matcher (same id);
    a different tag comment is a different matcher; tagged or not, the rows are the query's."""
    for i in range(3):
        node.add_container(f"c{i}", "shop", "api", f"s{i}", f"10.210.{i}.2", 1)
    sql = config_mod.SUBSCRIPTION_SQL
    truth = sorted(map(tuple, node.query(sql)))
    a1, rows_a = _subscribe(node.api, tagged_sql(sql, "aaaa"), 3)
    a2, _ = _subscribe(node.api, tagged_sql(sql, "aaaa"), 3)
    b, rows_b = _subscribe(node.api, tagged_sql(sql, "bbbb"), 3)
    assert a1 == a2, "klukai no longer shares a matcher between equal texts"
    assert b != a1, "klukai gave two different texts one matcher: tags would no longer separate workers"
    assert sorted(map(tuple, rows_a)) == sorted(map(tuple, rows_b)) == truth


def test_workers_on_a_real_node_each_subscribe_to_their_own_matcher(
    pyz: Path, workdir: Path, node: harness.CorrosionNode
) -> None:
    """4 workers at once against a node holding 3,000 rows (issue 23's setting): a matcher each,
    so none attaches to another's while it is still sending its snapshot (the deadlock in
    tagged_sql), and no snapshot had to be abandoned."""
    node.execute("INSERT INTO services (project, name) VALUES ('shop', 'api')")
    for k in range(0, 3000, 1000):
        node.execute(
            *[
                [
                    "INSERT INTO containers (id, service, project, server_id, ip) VALUES (?, 'api', 'shop', ?, ?)",
                    [f"c{i}", f"s{i % 256}", f"10.210.{i % 256}.{i // 256 + 2}"],
                ]
                for i in range(k, k + 1000)
            ]
        )
    d = harness.DnsDaemon(pyz, workdir, node.api, workers=4)
    try:
        # Without a stall a worker is ready once its own snapshot is loaded; one stall would
        # cost SNAPSHOT_IDLE (10 s) first, so readiness is awaited that long and then the
        # counters say whether any snapshot stalled.
        harness.wait_until(lambda: d.stats()["ready"], subscriber_mod.SNAPSHOT_IDLE, "4 workers ready")
        stats = d.stats()
        assert stats["cache_containers"] == 3000
        assert stats["subscriptions_abandoned"] == 0
        assert len({w["subscription_id"] for w in stats["workers"]}) == 4, "workers share a matcher"
    finally:
        d.close()
