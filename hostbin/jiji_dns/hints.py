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
from typing import Any

from . import httpstream
from .config import Config, reconnect_delay
from .events import Counters, log
from .responder import Responder
from .table import row_reader

BATCH = 256  # container ids re-read per query


class ChangeHints:
    def __init__(self, config: Config, responder: Responder, counters: Counters) -> None:
        self.config = config
        self.responder = responder
        self.counters = counters
        self._pending: set[str] = set()
        self._reconcile_requested = False
        self._refreshed_since_reconcile: set[str] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._streamed = False

    def request_reconcile(self) -> None:
        """Called by the subscriber after each snapshot or resume."""
        self._reconcile_requested = True
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        worker = asyncio.ensure_future(self._refresh_loop())
        failures = 0
        try:
            while not self._stopping:
                self._streamed = False
                try:
                    if await self._listen():
                        return  # the node has no update notifications: nothing to do
                except httpstream.STREAM_ERRORS as e:
                    failures = 1 if self._streamed else failures + 1
                    log("hints_error", error=f"{type(e).__name__}: {e}", attempt=failures)
                await asyncio.sleep(reconnect_delay(self.config, failures))
        finally:
            worker.cancel()

    async def _listen(self) -> bool:
        """Follow the notification stream; True when the node does not offer it."""
        api = self.config.corrosion_api
        resp = await httpstream.request(api.host, api.port, "POST", "/v1/updates/containers")
        try:
            if resp.status == 404:
                log("hints_unavailable", reason="the node has no /v1/updates endpoint")
                return True
            if resp.status != 200:
                raise httpstream.HTTPError(resp.status, await resp.text())
            self._streamed = True
            log("hints_open")
            async for line in resp.lines():
                event = json.loads(line)
                notify = event.get("notify") if isinstance(event, dict) else None
                if notify and isinstance(notify[1], list) and notify[1]:
                    self._pending.add(str(notify[1][0]))
                    self._wake.set()
                elif isinstance(event, dict) and "error" in event:
                    raise ConnectionError(f"corrosion error: {event['error']}")
            raise ConnectionError("update stream ended")
        finally:
            resp.close()

    async def _refresh_loop(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            if self._reconcile_requested and self.responder.ready:
                self._reconcile_requested = False
                try:
                    await self._reconcile()
                except httpstream.STREAM_ERRORS as e:
                    log("reconcile_error", error=f"{type(e).__name__}: {e}")
                    self._reconcile_requested = True
                    await asyncio.sleep(self.config.reconnect_base)
                    self._wake.set()
            while self._pending and not self._stopping:
                if not self.responder.ready:
                    self._pending.clear()  # the first snapshot will carry these rows
                    break
                batch = [self._pending.pop() for _ in range(min(BATCH, len(self._pending)))]
                try:
                    await self._refresh(batch)
                except httpstream.STREAM_ERRORS as e:
                    log("hints_refresh_error", error=f"{type(e).__name__}: {e}", containers=len(batch))

    async def _read(self, sql: str, params: list[str]) -> dict[str, Any]:
        """Rows of the subscription's query (narrowed by `sql`) as containers by id."""
        api = self.config.corrosion_api
        resp = await httpstream.request(api.host, api.port, "POST", "/v1/queries", [sql, params], timeout=30)
        read_row = None
        found: dict[str, Any] = {}
        try:
            if resp.status != 200:
                raise httpstream.HTTPError(resp.status, await resp.text())
            async for line in resp.lines():
                event = json.loads(line)
                if "columns" in event:
                    read_row = row_reader({name: i for i, name in enumerate(event["columns"])})
                elif "row" in event:
                    if read_row is None:
                        raise ValueError("a row arrived before the query's columns")
                    c = read_row(event["row"][1])
                    found[c.id] = c
                elif "error" in event:
                    raise ConnectionError(f"corrosion error: {event['error']}")
                elif "eoq" in event:
                    break
        finally:
            resp.close()
        return found

    async def _refresh(self, ids: list[str]) -> None:
        table = self.responder.table
        found = await self._read(f"{self.config.subscription_sql} AND c.id IN ({', '.join('?' for _ in ids)})", ids)
        if table is not self.responder.table:
            return  # a resync swapped the table meanwhile; its snapshot is newer than this read
        for cid in ids:
            if cid in found:
                table.upsert(found[cid])
            else:
                table.delete(cid)
        self._refreshed_since_reconcile.update(ids)
        self.counters.hints_applied += len(ids)

    async def _reconcile(self) -> None:
        table = self.responder.table
        self._refreshed_since_reconcile = set()
        truth = await self._read(self.config.subscription_sql, [])
        if table is not self.responder.table:
            self._reconcile_requested = True  # read again against the new table
            return
        skip = self._refreshed_since_reconcile
        stale = [cid for cid in table.containers if cid not in truth and cid not in skip]
        changed = [c for cid, c in truth.items() if cid not in skip and table.containers.get(cid) != c]
        for cid in stale:
            table.delete(cid)
        for c in changed:
            table.upsert(c)
        self.counters.reconciled += len(stale) + len(changed)
        log("reconciled", containers=len(truth), removed=len(stale), updated=len(changed))
