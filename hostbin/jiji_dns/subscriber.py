"""Keeps the served table equal to Corrosion's healthy containers, across disconnects.

Protocol (Corrosion NDJSON, v1 and the older v0 shape): `columns`, `row` per current result
row, `eoq`, then live `change` events `[type, rowid, values, change_id]` (v0: no change_id).
A new subscription's rows are collected and replace the served table only at `eoq`
(TableOwner.replace), so a resync never serves a half-loaded table. After a disconnect we resume with
`?from=<last change id>`; if the subscription is gone or the first change after resuming is not
exactly last+1 (the node keeps only recent changes and silently skips ahead), the table is
rebuilt from a fresh snapshot so rows deleted meanwhile stop being served.

Which matcher serves us: klukai keeps one matcher per SQL text and hands every subscription to
that text the same id, and klukai 0.1.4 can deadlock a matcher for good when a second
subscriber attaches while it is still sending its first snapshot (see tagged_sql). So the text
we send carries a tag of our own in a trailing SQL comment: each subscriber (each worker)
starts with a fresh tag, so no two subscribers share a matcher, and a new subscription whose
matcher sent nothing, stopped sending (silent for SNAPSHOT_IDLE) or said it failed is abandoned
with its tag: the next one asks with a new tag, that is for a new matcher, never again for that
one. Only a snapshot cut while it was arriving is asked again of the same matcher (_was_cut).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from . import httpstream
from . import rows as rows_mod
from .config import Config, reconnect_delay
from .events import Counters, log, log_limited
from .owner import TableOwner
from .rows import BadEvent, RowReader
from .table import Container

# Seconds a new subscription may stay silent before its snapshot is complete.
SNAPSHOT_IDLE = 10.0


def new_tag() -> str:
    """A tag no other subscriber uses: 48 random bits (a collision would only share a matcher)."""
    return secrets.token_hex(6)


def tagged_sql(sql: str, tag: str) -> str:
    """`sql` as sent to POST /v1/subscriptions: a trailing comment makes the text, and so klukai's
    matcher, ours alone; SQLite and klukai's parser ignore it, so the rows are the same.

    Why: klukai keeps one matcher per SQL text (klukai-types 0.4.0 pubsub.rs,
    SubsManager::get_or_insert). The first POST of a text creates it (Matcher::create; Matcher::run
    streams the initial query's rows through a 512-event channel that process_sub_channel in
    klukai-agent 0.1.4 api/public/pubsub.rs drains). A POST of the same text meanwhile attaches:
    upsert_sub -> catch_up_sub -> catch_up_sub_anew, which runs MatcherHandle::all_rows inside
    block_in_place, and all_rows first blocks its thread on a condvar (wait_for_running_state)
    until Matcher::cmd_loop marks the matcher running, after the last initial row is drained.
    tokio 1.47.1 re-wakes a task that used up its cooperative budget (128 operations) through
    the defer list of the thread it ran on (task/coop register_waker -> Context::defer), and a
    thread in block_in_place wakes that list only when the blocking closure returns
    (scheduler/multi_thread/worker.rs run()). When the drain task (or the first subscriber's
    forwarder) yields on its budget and its thread then takes up the attaching catch_up_sub, the
    drain's wake-up waits behind a wait that needs the drain: Matcher::run blocks in
    blocking_send, the matcher never runs, the first subscriber keeps the rows it had (63 or
    127: one budget) and the others get none. Every later POST of that text attaches to the
    same matcher and blocks one more thread, and klukai never removes it (its subscribers keep
    their receivers) until Corrosion restarts. Seen with 4 plain HTTP clients subscribing at once
    to nodes just started with 3,000 rows: 7 of 32 deadlocked so (thread stacks taken with gdb),
    0 of 30 when each client's text had its own tag (issue 23).

    So each subscriber starts with a tag nobody else uses (workers do not share, so none of ours
    attaches to a matcher another is being sent the snapshot of), and a matcher that sent
    nothing, went silent or failed leaves its tag behind, so a retry is never a wait on it.
    """
    return f"{sql} /* jiji-dns {tag} */"


class ResyncNeeded(Exception):
    """The subscription cannot be continued: start over from a full snapshot."""


class NodeError(ConnectionError):
    """The node sent an `error` event: a disconnect, and on a new subscription a failed matcher."""


class Subscriber:
    def __init__(
        self,
        config: Config,
        tables: TableOwner,
        counters: Counters,
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.tables = tables
        self.counters = counters
        # Called after every snapshot and every resume: the caller re-reads the truth (hints.py).
        self.on_connected = on_connected
        self.sub_id: str | None = None
        self.last_change_id: int | None = None
        self._reader: RowReader | None = None
        self._stopping = False
        self._opened_at = 0.0
        self._streamed = False
        # This subscriber's own matcher (see tagged_sql); replaced when a snapshot never came.
        self.tag = new_tag()
        self._snapshot_done = False
        self._snapshot_rows = 0

    def stop(self) -> None:
        self._stopping = True

    async def run(self) -> None:
        failures = 0
        bad_streak = 0
        last_bad = 0.0
        while not self._stopping:
            self._streamed = False
            try:
                # Both return only by raising: a stream that ends is a disconnect.
                if self.sub_id and self.last_change_id is not None:
                    await self._resume()
                else:
                    await self._subscribe()
            except BadEvent as e:
                # A broken event: start over from a snapshot, but back off while the node keeps
                # sending broken ones (the streak ends after a quiet retry_slow).
                now = time.monotonic()
                bad_streak = bad_streak + 1 if now - last_bad < 2 * self.config.retry_slow else 1
                last_bad = now
                self.counters.bad_events += 1
                self.counters.resyncs += 1
                self.sub_id = None
                self.last_change_id = None
                delay = reconnect_delay(self.config, bad_streak, self.config.retry_slow)
                log("subscription_bad_event", error=str(e)[:300], attempt=bad_streak, delay_s=f"{delay:.2f}")
                self.counters.subscription_state = "resyncing"
                await asyncio.sleep(delay)
                continue
            except ResyncNeeded as e:
                log("subscription_resync", reason=str(e), last_change_id=self.last_change_id)
                self.counters.resyncs += 1
                self.sub_id = None
                self.last_change_id = None
                continue
            except httpstream.STREAM_ERRORS as e:
                # The backoff starts over after a connection that worked (the seed's counter reset).
                failures = 1 if self._streamed else failures + 1
                log("subscription_error", error=f"{type(e).__name__}: {str(e)[:300]}", attempt=failures)
            if self._stopping:
                break
            self.counters.subscription_state = "disconnected"
            self.counters.reconnects += 1
            delay = reconnect_delay(self.config, failures)
            log("subscription_reconnect", attempt=failures + 1, delay_s=f"{delay:.2f}")
            await asyncio.sleep(delay)

    async def _subscribe(self) -> None:
        api = self.config.corrosion_api
        self.counters.subscription_state = "subscribing"
        self._opened_at = time.perf_counter()
        sql = tagged_sql(self.config.subscription_sql, self.tag)
        resp = await httpstream.request(api.host, api.port, "POST", "/v1/subscriptions", sql)
        try:
            if resp.status != 200:
                raise httpstream.HTTPError(resp.status, await resp.text())
            self.sub_id = resp.headers.get("corro-query-id")
            self.last_change_id = None
            self.counters.subscription_id = self.sub_id or ""
            self._streamed = True
            self._snapshot_done = False
            self._snapshot_rows = 0
            log("subscription_open", sub_id=self.sub_id or "", tag=self.tag)
            try:
                await self._consume(resp, fresh=True)
            except BaseException as e:
                if not self._snapshot_done and not self._was_cut(e):
                    self._abandon(e)
                raise
        finally:
            resp.close()

    def _was_cut(self, error: BaseException) -> bool:
        """A snapshot that was arriving when its stream was cut (klukai ends a subscriber's
        stream without a word when it falls 10,240 events behind the matcher: `subscription
        skipped N events, aborting`, seen with four 64,768-row snapshots at once on two busy
        cores) comes from a matcher that works: asking it again attaches to it, and klukai serves
        an attached subscriber its rows with back-pressure, so it cannot fall behind. Silence
        (the watchdog's TimeoutError), an error event, a broken event or a stream without a
        row is a matcher that does not work: abandoned."""
        if self._snapshot_rows == 0 or isinstance(error, (TimeoutError, NodeError)):
            return False
        return isinstance(error, (OSError, asyncio.IncompleteReadError))  # ConnectionError is an OSError

    def _abandon(self, error: BaseException) -> None:
        """This matcher never completed a snapshot for us: never ask for its text again."""
        old = self.tag
        self.tag = new_tag()
        self.sub_id = None
        self.counters.subscriptions_abandoned += 1
        log(
            "subscription_abandoned",
            sub_id=self.counters.subscription_id,
            tag=old,
            next_tag=self.tag,
            error=f"{type(error).__name__}: {str(error)[:200]}",
        )

    async def _resume(self) -> None:
        api = self.config.corrosion_api
        self.counters.subscription_state = "resuming"
        path = f"/v1/subscriptions/{self.sub_id}?from={self.last_change_id}"
        resp = await httpstream.request(api.host, api.port, "GET", path)
        try:
            if resp.status != 200:
                raise ResyncNeeded(f"resume answered HTTP {resp.status}")
            self._streamed = True
            log("subscription_resumed", sub_id=self.sub_id or "", from_change_id=self.last_change_id)
            self.counters.subscription_state = "live"
            if self.on_connected:
                self.on_connected()
            await self._consume(resp, fresh=False)
        finally:
            resp.close()

    async def _consume(self, resp: httpstream.Response, fresh: bool) -> None:
        # Until `eoq`, changes of a fresh subscription are kept aside with its rows (rows win).
        pending: dict[str, Container] | None = {} if fresh else None
        loop = asyncio.get_running_loop()
        # A snapshot must keep moving: silence for SNAPSHOT_IDLE before `eoq` is a disconnect
        # (TimeoutError) and abandons the matcher (see tagged_sql); a live stream may be quiet
        # for ever.
        async with asyncio.timeout_at(loop.time() + SNAPSHOT_IDLE if fresh else None) as watchdog:
            await self._events(resp, pending, fresh, watchdog, loop)

    async def _events(
        self,
        resp: httpstream.Response,
        pending: dict[str, Container] | None,
        fresh: bool,
        watchdog: asyncio.Timeout,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        rows: list[Container] = []
        seen = 0
        async for line in resp.lines():
            if pending is not None:
                seen += 1
                if seen & 255 == 0:
                    watchdog.reschedule(loop.time() + SNAPSHOT_IDLE)
            try:
                event = json.loads(line)
            except ValueError:
                raise BadEvent(f"subscription sent a line that is not JSON: {line[:200]!r}") from None
            if not isinstance(event, dict) or len(event) != 1:
                raise BadEvent(f"unexpected subscription event {line[:200]!r}")
            kind, body = next(iter(event.items()))
            if kind == "row":
                if pending is None:
                    raise ResyncNeeded("rows arrived on a resumed subscription")
                if self._reader is None:
                    raise BadEvent("a row arrived before the subscription's columns")
                c = self._reader.row(body)
                self._snapshot_rows += 1
                if c is not None:
                    rows.append(c)
                    if len(rows) + len(pending) > self.tables.max_rows:
                        raise BadEvent(f"the snapshot has more than {self.tables.max_rows} rows (row cap)")
            elif kind == "columns":
                self._reader = RowReader(body)
            elif kind == "eoq":
                if pending is None:
                    continue
                self._load([*pending.values(), *rows], body)
                rows = []
                pending = None
                watchdog.reschedule(None)
            elif kind == "change":
                self._apply_change(body, pending)
            elif kind == "error":
                if not fresh:
                    # e.g. "subscription already deleted older changes": resuming cannot work.
                    raise ResyncNeeded(f"resume refused: {str(body)[:200]}")
                raise NodeError(f"corrosion error: {str(body)[:200]}")
            else:
                # A kind a newer node may add: skipping it is safer than a resync loop.
                log_limited("subscription_unknown_event", kind=str(kind)[:50])
        raise ConnectionError("subscription stream ended")

    def _load(self, rows: list[Container], eoq: Any) -> None:
        """The snapshot is complete: serve it."""
        change_id = eoq.get("change_id") if isinstance(eoq, dict) else None
        if change_id is not None and (not isinstance(change_id, int) or isinstance(change_id, bool)):
            raise BadEvent(f"eoq change id is not a number: {str(change_id)[:50]}")
        started = time.perf_counter()
        self.tables.replace(rows)
        self._snapshot_done = True
        self.last_change_id = change_id
        self.counters.last_change_id = self.last_change_id
        self.counters.subscription_state = "live"
        log(
            "snapshot_loaded",
            containers=len(self.tables.table.containers),
            names=len(self.tables.table.names()),
            load_ms=f"{(time.perf_counter() - started) * 1000:.1f}",
            since_request_ms=f"{(time.perf_counter() - self._opened_at) * 1000:.1f}",
            change_id=self.last_change_id,
        )
        if self.on_connected:
            self.on_connected()

    def _apply_change(self, body: Any, pending: dict[str, Container] | None) -> None:
        kind, container_id, container, change_id = rows_mod.change(self._reader, body)
        if change_id is not None and self.last_change_id is not None and change_id != self.last_change_id + 1:
            raise ResyncNeeded(f"change id gap: expected {self.last_change_id + 1}, got {change_id}")
        if kind == "delete":
            container = None  # an unusable row counts as gone, too
        if pending is None:
            self.tables.apply([(container_id, container)])
        elif container is None:
            pending.pop(container_id, None)
        else:
            pending[container_id] = container
            if len(pending) > self.tables.max_rows:
                raise BadEvent(f"the snapshot has more than {self.tables.max_rows} rows (row cap)")
        if change_id is not None:
            self.last_change_id = change_id
            self.counters.last_change_id = change_id
