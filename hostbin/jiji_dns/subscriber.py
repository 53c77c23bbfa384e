"""Keeps the responder's table equal to Corrosion's healthy containers, across disconnects.

Protocol (Corrosion NDJSON, v1 and the older v0 shape): `columns`, `row` per current result
row, `eoq`, then live `change` events `[type, rowid, values, change_id]` (v0: no change_id).
A new subscription's rows are collected into a fresh table that replaces the served one only at
`eoq`, so a resync never serves a half-loaded table. After a disconnect we resume with
`?from=<last change id>`; if the subscription is gone or the first change after resuming is not
exactly last+1 (the node keeps only recent changes and silently skips ahead), the table is
rebuilt from a fresh snapshot so rows deleted meanwhile stop being served.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from . import httpstream
from .config import Config, reconnect_delay
from .events import Counters, log
from .responder import Responder
from .table import COLUMNS, Container, ServiceTable, row_reader


class ResyncNeeded(Exception):
    """The subscription cannot be continued: start over from a full snapshot."""


class Subscriber:
    def __init__(
        self,
        config: Config,
        responder: Responder,
        counters: Counters,
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.responder = responder
        self.counters = counters
        # Called after every snapshot and every resume: the caller re-reads the truth (hints.py).
        self.on_connected = on_connected
        self.sub_id: str | None = None
        self.last_change_id: int | None = None
        self._read_row: Callable[[list[Any]], Container] | None = None
        self._stopping = False
        self._opened_at = 0.0
        self._streamed = False

    def stop(self) -> None:
        self._stopping = True

    async def run(self) -> None:
        failures = 0
        while not self._stopping:
            self._streamed = False
            try:
                # Both return only by raising: a stream that ends is a disconnect.
                if self.sub_id and self.last_change_id is not None:
                    await self._resume()
                else:
                    await self._subscribe()
            except ResyncNeeded as e:
                log("subscription_resync", reason=str(e), last_change_id=self.last_change_id)
                self.counters.resyncs += 1
                self.sub_id = None
                self.last_change_id = None
                continue
            except httpstream.STREAM_ERRORS as e:
                # The backoff starts over after a connection that worked (the seed's counter reset).
                failures = 1 if self._streamed else failures + 1
                log("subscription_error", error=f"{type(e).__name__}: {e}", attempt=failures)
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
        resp = await httpstream.request(api.host, api.port, "POST", "/v1/subscriptions", self.config.subscription_sql)
        try:
            if resp.status != 200:
                raise httpstream.HTTPError(resp.status, await resp.text())
            self.sub_id = resp.headers.get("corro-query-id")
            self.last_change_id = None
            self.counters.subscription_id = self.sub_id or ""
            self._streamed = True
            log("subscription_open", sub_id=self.sub_id or "")
            await self._consume(resp, fresh=True)
        finally:
            resp.close()

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
        pending: ServiceTable | None = None
        rows: list[Any] = []
        if fresh:
            pending = ServiceTable(self.responder.table.domain, self.responder.table.ttl)
        async for line in resp.lines():
            if pending is not None and line.startswith(b'{"row":'):
                rows.append(self._row(json.loads(line)["row"][1]))  # a snapshot's bulk: one step
                continue
            event = json.loads(line)
            if not isinstance(event, dict) or len(event) != 1:
                raise ValueError(f"unexpected subscription event {line[:200]!r}")
            kind, body = next(iter(event.items()))
            if kind == "columns":
                columns = {name: i for i, name in enumerate(body)}
                missing = [c for c in COLUMNS if c not in columns]
                if missing:
                    raise ValueError(f"subscription lacks columns {missing}")
                self._read_row = row_reader(columns)
            elif kind == "row":
                if pending is None:
                    raise ResyncNeeded("rows arrived on a resumed subscription")
                rows.append(self._row(body[1]))
            elif kind == "eoq":
                if pending is None:
                    continue
                started = time.perf_counter()
                pending.load(rows)
                rows = []
                self.responder.table = pending
                self.responder.ready = True
                pending = None
                change_id = body.get("change_id") if isinstance(body, dict) else None
                self.last_change_id = change_id if isinstance(change_id, int) else None
                self.counters.last_change_id = self.last_change_id
                self.counters.subscription_state = "live"
                log(
                    "snapshot_loaded",
                    containers=len(self.responder.table.containers),
                    names=len(self.responder.table.names()),
                    load_ms=f"{(time.perf_counter() - started) * 1000:.1f}",
                    since_request_ms=f"{(time.perf_counter() - self._opened_at) * 1000:.1f}",
                    change_id=self.last_change_id,
                )
                if self.on_connected:
                    self.on_connected()
            elif kind == "change":
                self._apply_change(body, pending)
            elif kind == "error":
                if not fresh:
                    # e.g. "subscription already deleted older changes": resuming cannot work.
                    raise ResyncNeeded(f"resume refused: {body}")
                raise ConnectionError(f"corrosion error: {body}")
        raise ConnectionError("subscription stream ended")

    def _row(self, values: list[Any]) -> Container:
        if self._read_row is None:
            raise ValueError("a row arrived before the subscription's columns")
        return self._read_row(values)

    def _apply_change(self, body: list[Any], pending: ServiceTable | None) -> None:
        change_type, _rowid, values = body[0], body[1], body[2]
        change_id = body[3] if len(body) > 3 else None
        if change_id is not None and self.last_change_id is not None and change_id != self.last_change_id + 1:
            raise ResyncNeeded(f"change id gap: expected {self.last_change_id + 1}, got {change_id}")
        table = pending if pending is not None else self.responder.table
        container = self._row(values)
        if change_type == "delete":
            table.delete(container.id)
        elif change_type in ("insert", "update"):
            table.upsert(container)
        else:
            raise ValueError(f"unknown change type {change_type!r}")
        if change_id is not None:
            self.last_change_id = change_id
            self.counters.last_change_id = change_id
