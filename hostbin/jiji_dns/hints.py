"""Reading rows straight from Corrosion: the fast path for changes, and reconciliation.

A subscription is the source of truth, but the node batches subscription changes (klukai holds
them up to 600 ms). `/v1/updates/containers` notifies changed primary keys within ~10 ms; for
each notified container we re-read its row with the subscription's own query and apply it to
the live table, so answers change within milliseconds. The subscription's own events arrive
later and are then no-ops. Hints never touch a table before its first snapshot, and a node
without the endpoint (404) simply leaves the subscription alone in charge.

Reconciliation: a node can lose subscription changes made just before it restarts (seen with
klukai: a delete within its 600 ms batching window before a restart never reached any
subscriber, and the shared subscription's snapshot kept the row). So after every (re)connection
of the subscription the whole result is read once with a plain query and the table is made equal
to it. Rows a notification refreshed meanwhile are left alone: their read is newer.
"""

from __future__ import annotations

import asyncio
import json

from . import httpstream
from .config import Config, reconnect_delay
from .events import Counters, log
from .owner import TableOwner
from .rows import MAX_CELL, BadEvent, RowReader
from .table import Container

BATCH = 256  # container ids re-read per query
# A read is retried after a broken stream or a broken event; any other error is a bug and ends
# the task (the daemon exits: event=fatal).
RETRIED = (*httpstream.STREAM_ERRORS, BadEvent)


def _event(line: bytes) -> object:
    try:
        return json.loads(line)
    except ValueError:
        raise BadEvent(f"the node sent a line that is not JSON: {line[:200]!r}") from None


class ChangeHints:
    def __init__(self, config: Config, tables: TableOwner, counters: Counters) -> None:
        self.config = config
        self.tables = tables
        self.counters = counters
        self._pending: set[str] = set()
        self._reconcile_requested = False
        self._refreshed_since_reconcile: set[str] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._streamed = False
        self._unavailable_logged = False

    def request_reconcile(self) -> None:
        """Called by the subscriber after each snapshot or resume."""
        self._reconcile_requested = True
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def listen_loop(self) -> None:
        """Follow the notification stream for ever, reconnecting with backoff. A node without
        the endpoint (404) is asked again every retry_slow: it may be upgraded meanwhile,
        and reconciliation (refresh_loop) does not depend on this stream."""
        failures = 0
        while not self._stopping:
            self._streamed = False
            try:
                if await self._listen():
                    await asyncio.sleep(self.config.retry_slow)
                    continue
            except RETRIED as e:
                failures = 1 if self._streamed else failures + 1
                log("hints_error", error=f"{type(e).__name__}: {e}", attempt=failures)
            await asyncio.sleep(reconnect_delay(self.config, failures))

    async def _listen(self) -> bool:
        """Follow the notification stream; True when the node does not offer it."""
        api = self.config.corrosion_api
        resp = await httpstream.request(api.host, api.port, "POST", "/v1/updates/containers")
        try:
            if resp.status == 404:
                if not self._unavailable_logged:
                    log("hints_unavailable", reason="the node has no /v1/updates endpoint; reconciling without it")
                    self._unavailable_logged = True
                return True
            if resp.status != 200:
                raise httpstream.HTTPError(resp.status, await resp.text())
            self._streamed = True
            log("hints_open")
            async for line in resp.lines():
                event = _event(line)
                notify = event.get("notify") if isinstance(event, dict) else None
                if isinstance(notify, list) and len(notify) >= 2 and isinstance(notify[1], list) and notify[1]:
                    key = notify[1][0]
                    if isinstance(key, (str, int)) and len(str(key)) <= MAX_CELL:
                        self._pending.add(str(key))
                        self._wake.set()
                        if len(self._pending) > self.tables.max_rows:
                            # More notified than the table may hold: a full re-read is cheaper.
                            self._pending.clear()
                            self.request_reconcile()
                elif isinstance(event, dict) and "error" in event:
                    raise ConnectionError(f"corrosion error: {str(event['error'])[:200]}")
            raise ConnectionError("update stream ended")
        finally:
            resp.close()

    async def refresh_loop(self) -> None:
        """Reconcile on request and re-read notified rows, for ever (an error is retried)."""
        failures = 0
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            if self._reconcile_requested and self.tables.ready:
                self._reconcile_requested = False
                try:
                    await self._reconcile()
                    failures = 0
                except RETRIED as e:
                    failures += 1
                    log("reconcile_error", error=f"{type(e).__name__}: {e}", attempt=failures)
                    self._reconcile_requested = True
                    await asyncio.sleep(reconnect_delay(self.config, failures))
                    self._wake.set()
            while self._pending and not self._stopping:
                if not self.tables.ready:
                    self._pending.clear()  # the first snapshot will carry these rows
                    break
                batch = [self._pending.pop() for _ in range(min(BATCH, len(self._pending)))]
                try:
                    await self._refresh(batch)
                except RETRIED as e:
                    log("hints_refresh_error", error=f"{type(e).__name__}: {e}", containers=len(batch))

    async def _read(self, sql: str, params: list[str]) -> dict[str, Container]:
        """Rows of the subscription's query (narrowed by `sql`) as containers by id."""
        api = self.config.corrosion_api
        resp = await httpstream.request(api.host, api.port, "POST", "/v1/queries", [sql, params], timeout=30)
        read_row: RowReader | None = None
        found: dict[str, Container] = {}
        try:
            if resp.status != 200:
                raise httpstream.HTTPError(resp.status, await resp.text())
            async for line in resp.lines():
                event = _event(line)
                if not isinstance(event, dict):
                    raise BadEvent(f"query answered a non-object line {line[:200]!r}")
                if "columns" in event:
                    read_row = RowReader(event["columns"])
                elif "row" in event:
                    if read_row is None:
                        raise BadEvent("a row arrived before the query's columns")
                    c = read_row.row(event["row"])
                    if c is not None:
                        found[c.id] = c
                        if len(found) > self.tables.max_rows:
                            raise BadEvent(f"query answered more than {self.tables.max_rows} rows (row cap)")
                elif "error" in event:
                    raise ConnectionError(f"corrosion error: {str(event['error'])[:200]}")
                elif "eoq" in event:
                    break
        finally:
            resp.close()
        return found

    async def _refresh(self, ids: list[str]) -> None:
        snapshots = self.tables.snapshots
        found = await self._read(f"{self.config.subscription_sql} AND c.id IN ({', '.join('?' for _ in ids)})", ids)
        if snapshots != self.tables.snapshots:
            return  # a resync replaced the table meanwhile; its snapshot is newer than this read
        self.tables.apply([(cid, found.get(cid)) for cid in ids])
        self._refreshed_since_reconcile.update(ids)
        self.counters.hints_applied += len(ids)

    async def _reconcile(self) -> None:
        snapshots = self.tables.snapshots
        self._refreshed_since_reconcile = set()
        truth = await self._read(self.config.subscription_sql, [])
        if snapshots != self.tables.snapshots:
            self._reconcile_requested = True  # read again against the new table
            return
        # Only the difference is applied, not a replace: a table already equal to the truth (the
        # usual case) is left untouched, negative cache included.
        skip = self._refreshed_since_reconcile
        served = self.tables.table.containers
        stale = [cid for cid in served if cid not in truth and cid not in skip]
        changed = [c for cid, c in truth.items() if cid not in skip and served.get(cid) != c]
        self.tables.apply([*((cid, None) for cid in stale), *((c.id, c) for c in changed)])
        self.counters.reconciled += len(stale) + len(changed)
        log("reconciled", containers=len(truth), removed=len(stale), updated=len(changed))
