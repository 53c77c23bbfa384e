"""`jiji-net registrar`: keeps this server's container rows in Corrosion equal to its engine.

Thin edges around the pure core (engine.py reads the engine's JSON, registrations.py decides rows
and statements):
- a thread follows `ENGINE events` and marks the containers an event is about as pending;
- the main loop inspects pending containers and writes their rows, and reconciles the engine's
  full list against this server's rows at start, every `--reconcile-interval` seconds and after
  the event stream restarts, so nothing changed while the registrar was away is lost.
One thread writes, so an event and a reconcile never race each other. (A change in the moment
between starting `events` and the engine subscribing it is caught by the next periodic
reconcile.) Failures of the engine or of Corrosion are retried with capped exponential backoff;
only a bad configuration ends it.
"""

from __future__ import annotations

import argparse
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jiji_common import layout
from jiji_common.counters import CounterFile
from jiji_common.logline import log

from . import engine, registrations
from .corrosion import Corrosion, CorrosionError
from .enginecli import EngineCLI, EngineUnavailable, EventStream, Looked
from .registrations import Host, Row
from .sources import HostConfig

CONFIG_ERROR = 2  # the unit's RestartPreventExitStatus: restarting cannot fix the configuration
STREAM_GRACE = 2.0  # seconds the first reconcile waits for the event stream to open
# events (relevant ones read), errors (malformed events and inspects, failed rounds): for `jiji-net metrics`.
COUNTERS = CounterFile(layout.REGISTRAR_COUNTERS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--network", default="jiji", help="the engine network whose containers are registered (default: jiji)")
    p.add_argument(
        "--reconcile-interval", type=float, default=30, help="seconds between full comparisons of engine and registry (default: 30)"
    )
    p.add_argument("--max-backoff", type=float, default=30, help="longest wait between retries, in seconds (default: 30)")
    p.add_argument("--once", action="store_true", help="reconcile once and exit (1 if the engine or Corrosion did not answer)")


class Backoff:
    """1 s, 2 s, 4 s ... up to `cap`, each with up to 25% jitter so servers do not retry in step."""

    def __init__(self, cap: float, first: float = 1.0, uniform: Callable[[float, float], float] = random.uniform) -> None:
        self.cap, self.first, self.failures = cap, first, 0
        self.uniform = uniform

    def next(self) -> float:
        delay = min(self.cap, self.first * 2**self.failures)
        self.failures = min(self.failures + 1, 30)
        return delay * self.uniform(0.75, 1.0)

    def reset(self) -> None:
        self.failures = 0


def sleep(stop: threading.Event, seconds: float) -> None:
    """Sleeps in short steps so SIGTERM is seen within half a second whatever the delay."""
    deadline = time.monotonic() + seconds
    while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
        stop.wait(min(left, 0.5))


class Pending:
    """Containers an event was about, not yet written: a set, so a burst of events about one
    container costs one inspect. Bounded: past `limit` ids they are dropped for a full reconcile."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._ids: dict[str, None] = {}
        self._full = False
        self._cond = threading.Condition()

    def add(self, cid: str) -> None:
        with self._cond:
            if len(self._ids) >= self.limit:
                self._ids.clear()
                self._full = True
            else:
                self._ids[cid] = None
            self._cond.notify()

    def request_reconcile(self) -> None:
        with self._cond:
            self._full = True
            self._cond.notify()

    def take(self, timeout: float) -> tuple[list[str], bool]:
        """Waits up to `timeout` for work; the pending ids and whether a reconcile was asked for."""
        with self._cond:
            if not self._ids and not self._full:
                self._cond.wait(timeout)
            ids, full = list(self._ids), self._full
            self._ids.clear()
            self._full = False
            return ids, full

    def put_back(self, ids: list[str], full: bool) -> None:
        with self._cond:
            for cid in ids:
                self._ids.setdefault(cid, None)
            self._full = self._full or full


@dataclass(frozen=True)
class Settings:
    host: Host
    engine: str
    corrosion_api: str
    reconcile_interval: float
    max_backoff: float


def settings_from(args: argparse.Namespace, config: HostConfig) -> Settings:
    """Raises ValueError naming the setting and the fix."""
    if config.container_engine not in engine.ENGINES:
        raise ValueError(
            f"container_engine is {config.container_engine!r} in {args.host_config}: the registrar follows docker or podman"
            " only (with `none` there are no containers to register); do not run jiji-registrar on this server"
        )
    if not args.reconcile_interval > 0 or not args.max_backoff > 0:
        raise ValueError("--reconcile-interval and --max-backoff must be positive numbers of seconds")
    return Settings(
        host=Host(server=config.server, subnet=config.subnet, network=args.network),
        engine=config.container_engine,
        corrosion_api=config.corrosion_api,
        reconcile_interval=args.reconcile_interval,
        max_backoff=args.max_backoff,
    )


@dataclass(frozen=True)
class Clock:
    """The registrar's time: what it reads, how it waits, how its backoff jitters. Real unless a
    test gives a fake one, so the retry timing can be checked without waiting for it."""

    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[threading.Event, float], None] = sleep
    uniform: Callable[[float, float], float] = random.uniform


class Registrar:
    def __init__(
        self,
        settings: Settings,
        corrosion: Corrosion,
        cli: EngineCLI,
        stop: threading.Event,
        clock: Clock | None = None,
        new_stream: Callable[[str, Callable[[str], None]], EventStream] = EventStream,
    ) -> None:
        self.settings = settings
        self.corrosion = corrosion
        self.cli = cli
        self.stop = stop
        self.clock = clock or Clock()
        self.new_stream = new_stream
        self.pending = Pending()
        # This server's rows as last read from or written to Corrosion, so an event that changes
        # nothing writes nothing. Replaced by every reconcile, so it cannot drift for long.
        self.rows: dict[str, Row] = {}
        self.skip_reasons: dict[str, str] = {}  # log a skipped container once per reason
        self._stream: EventStream | None = None
        self._stream_lock = threading.Lock()

    @property
    def server(self) -> str:
        return self.settings.host.server

    # --- the event stream (its own thread) ---

    def on_event_line(self, line: str) -> None:
        if not line.strip():
            return
        try:
            event = engine.parse_event(line)
        except engine.Malformed as e:
            log("malformed_event", error=str(e), line=line.strip()[:200])
            COUNTERS.add("errors")
            return
        if event is None or not event.relevant:
            return
        labelled = engine.PROJECT_LABEL in event.labels and engine.SERVICE_LABEL in event.labels
        if labelled or event.container_id in self.rows:
            COUNTERS.add("events")
            self.pending.add(event.container_id)

    def follow_events(self) -> None:
        backoff = Backoff(self.settings.max_backoff, uniform=self.clock.uniform)
        while True:
            stream = self.new_stream(self.settings.engine, self.on_event_line)
            started = self.clock.monotonic()
            code: int | str
            try:
                with self._stream_lock:
                    # Checked under the lock stop_events takes: no stream starts after it ran.
                    if self.stop.is_set():
                        return
                    self._stream = stream
                    stream.start()
                # Whatever happened while no stream was open is found by a reconcile.
                self.pending.request_reconcile()
                log("events_started", argv=" ".join(stream.argv))
                code = stream.follow()
            except OSError as e:
                code = str(e)
            except Exception as e:  # noqa: BLE001 - a bug in reading one line must not end event following
                stream.stop()
                code = f"{type(e).__name__}: {e}"
            if self.stop.is_set():
                return
            if self.clock.monotonic() - started > 60:
                backoff.reset()
            delay = backoff.next()
            log("events_ended", code=code, stderr=" | ".join(stream.stderr_tail), retry_in=f"{delay:.1f}")
            self.clock.sleep(self.stop, delay)

    def stop_events(self) -> None:
        with self._stream_lock:
            if self._stream is not None:
                self._stream.stop()

    # --- writing (main thread) ---

    def _decide(self, looked: Looked) -> dict[str, Row | None]:
        desired: dict[str, Row | None] = dict.fromkeys(looked.gone)
        for cid, error in looked.malformed.items():
            log("malformed_inspect", id=cid[:12], error=error)
            COUNTERS.add("errors")
        for cid, c in looked.found.items():
            row, why = registrations.desired_row(c, self.settings.host)
            desired[cid] = row
            if row is None and self.skip_reasons.get(cid) != why:
                log("not_registered", id=cid[:12], name=c.name, reason=why)
            self.skip_reasons[cid] = why
        return desired

    def _load_rows(self) -> tuple[dict[str, Row], set[tuple[str, str]]]:
        _, values = self.corrosion.query(registrations.SELECT_OWN, [self.server])
        rows = {r.id: r for r in map(registrations.row_from_db, values)}
        _, services = self.corrosion.query(registrations.SELECT_SERVICES)
        return rows, {(str(p), str(n)) for p, n in services}

    def reconcile(self) -> None:
        """Raises EngineUnavailable or CorrosionError; nothing is deleted unless the engine's
        full list was read."""
        began = time.monotonic()
        ids = self.cli.labelled_ids()
        looked = self.cli.inspect(ids)
        decided = self._decide(looked)
        desired = {cid: row for cid, row in decided.items() if row is not None}
        current, services = self._load_rows()
        statements, after = registrations.reconcile(desired, set(looked.malformed), current, services, self.server)
        if statements:
            self.corrosion.execute(statements)
        self._log_changes(current, after)
        self.rows = after
        self.skip_reasons = {cid: why for cid, why in self.skip_reasons.items() if cid in looked.found}
        log("reconciled", containers=len(ids), rows=len(after), statements=len(statements), ms=int((time.monotonic() - began) * 1000))

    def apply(self, ids: list[str]) -> None:
        """Inspects the containers events were about and writes what changed. Raises
        EngineUnavailable or CorrosionError."""
        desired = self._decide(self.cli.inspect(ids))
        statements, after = registrations.changes(desired, self.rows, self.server)
        if statements:
            self.corrosion.execute(statements)
        self._log_changes(self.rows, after)
        self.rows = after

    def _log_changes(self, before: dict[str, Row], after: dict[str, Row]) -> None:
        for cid in before.keys() - after.keys():
            log("deregistered", id=cid[:12], service=f"{before[cid].project}-{before[cid].service}")
        for cid, row in after.items():
            if before.get(cid) != row:
                log("registered", id=cid[:12], service=f"{row.project}-{row.service}", ip=row.ip, health=row.health_status,
                    instance=row.instance_id)  # fmt: skip

    def run(self) -> int:
        events = threading.Thread(target=self.follow_events, name="events", daemon=True)
        events.start()
        backoff = Backoff(self.settings.max_backoff, uniform=self.clock.uniform)
        # The first reconcile runs once the event stream is open (it asks for one), so nothing
        # can change unseen between the two; without a stream, it runs after a short grace.
        now = self.clock.monotonic
        next_reconcile = now() + STREAM_GRACE
        while not self.stop.is_set():
            wait = max(0.0, min(0.5, next_reconcile - now()))
            ids, full = self.pending.take(wait)
            due = full or now() >= next_reconcile
            try:
                if due:
                    self.reconcile()
                    next_reconcile = now() + self.settings.reconcile_interval
                    # A reconcile read every container, including the pending ones.
                    ids = []
                if ids:
                    self.apply(ids)
                backoff.reset()
            except Exception as e:  # noqa: BLE001 - the loop outlives any one failure; all are retried
                self.pending.put_back(ids, due)
                delay = backoff.next()
                error = str(e) if isinstance(e, EngineUnavailable | CorrosionError) else f"{type(e).__name__}: {e}"
                log("retry", what="reconcile" if due else "write", error=error[:300], retry_in=f"{delay:.1f}")
                COUNTERS.add("errors")
                self.clock.sleep(self.stop, delay)
        self.stop_events()
        events.join(5)
        log("stopped")
        return 0


def main(settings: Settings, once: bool = False) -> int:
    stop = threading.Event()
    registrar = Registrar(settings, Corrosion(settings.corrosion_api), EngineCLI(settings.engine), stop)
    if once:
        try:
            registrar.reconcile()
        except (EngineUnavailable, CorrosionError) as e:
            log("failed", error=str(e)[:300])
            return 1
        return 0

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    COUNTERS.start()
    log("started", server=settings.host.server, engine=settings.engine, network=settings.host.network,
        subnet=settings.host.subnet, corrosion=settings.corrosion_api)  # fmt: skip
    return registrar.run()
