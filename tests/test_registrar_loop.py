"""The registrar's loop parts that need no engine or Corrosion: the pending set's bound, the
backoff's cap, which event lines lead to an inspect, and the waits of both loops on a fake clock
(the event stream's restarts and the retries of failed writes), so no test waits for them."""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path

import pytest
from jiji_ops.corrosion import Corrosion, CorrosionError
from jiji_ops.enginecli import EngineCLI
from jiji_ops.registrar import Backoff, Clock, Pending, Registrar, settings_from
from jiji_ops.registrations import Row
from jiji_ops.sources import HostConfig

RECORDED = Path(__file__).parent / "recorded" / "registrar"
CONFIG = HostConfig("lab0", "10.210.0.1", "10.210.0.0/24", "podman", "jiji", "127.0.0.1:9")


def args(**changes: object) -> argparse.Namespace:
    values = {"network": "jiji", "reconcile_interval": 30.0, "max_backoff": 30.0, "host_config": "/etc/jiji/host.json"}
    return argparse.Namespace(**{**values, **changes})


def test_pending_coalesces_and_past_its_bound_asks_for_a_reconcile() -> None:
    p = Pending(limit=3)
    for cid in ("a", "b", "a", "c"):
        p.add(cid)
    assert p.take(0) == (["a", "b", "c"], False)
    for cid in ("a", "b", "c", "d"):
        p.add(cid)
    ids, full = p.take(0)
    assert full and len(ids) <= 3
    assert p.take(0) == ([], False)
    p.put_back(["x"], True)
    assert p.take(0) == (["x"], True)


def test_backoff_doubles_to_its_cap_with_jitter_and_resets() -> None:
    b = Backoff(cap=8)
    delays = [b.next() for _ in range(6)]
    for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert 0.75 * ceiling <= delay <= ceiling
    b.reset()
    assert b.next() <= 1


def test_settings_refuse_what_the_registrar_cannot_do() -> None:
    assert settings_from(args(), CONFIG).host.subnet == "10.210.0.0/24"
    with pytest.raises(ValueError, match="container_engine is 'none'"):
        settings_from(args(), HostConfig("lab0", "10.210.0.1", "10.210.0.0/24", "none", "jiji", "127.0.0.1:9"))
    with pytest.raises(ValueError, match="--reconcile-interval"):
        settings_from(args(reconcile_interval=0.0), CONFIG)


def test_only_relevant_events_of_labelled_or_registered_containers_are_pending() -> None:
    r = Registrar(settings_from(args(), CONFIG), Corrosion("127.0.0.1:9"), EngineCLI("podman"), threading.Event())
    lines = (RECORDED / "podman-4.3-events.ndjson").read_text().splitlines()
    for line in lines:
        r.on_event_line(line + "\n")
    # create/init are not relevant; the unlabelled "scratch" container is never looked at
    assert r.pending.take(0) == (["9b1e6c0d4a7f42e3b8c5d1f0a6e9b2c7d4f1a8e5b2c9d6f3a0e7b4c1d8f5a2e9"], False)
    # a registered container is followed even if an event comes without its labels
    r.rows = {"abc": Row("abc", "api", "myapp", "lab0", "10.210.0.9", "healthy", 1, "lab0")}
    r.on_event_line(json.dumps({"Type": "container", "Status": "remove", "ID": "abc", "Attributes": None}))
    r.on_event_line(json.dumps({"Type": "container", "Status": "remove", "ID": "zzz", "Attributes": None}))
    r.on_event_line("\n")
    assert r.pending.take(0) == (["abc"], False)


class FakeTime:
    """A clock that moves only when the registrar sleeps (or a fake stream lives): every wait the
    registrar asks for is recorded, and the run ends once `limit` waits were asked for."""

    def __init__(self, limit: int, stop: threading.Event) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.limit = limit
        self.stop = stop

    def sleep(self, stop: threading.Event, seconds: float) -> None:
        assert stop is self.stop
        self.sleeps.append(round(seconds, 6))
        self.now += seconds
        if len(self.sleeps) >= self.limit:
            self.stop.set()

    def clock(self, jitter: float = 1.0) -> Clock:
        # uniform(a, b) -> b * jitter: 1.0 gives each step's ceiling, 0.75 its floor.
        return Clock(monotonic=lambda: self.now, sleep=self.sleep, uniform=lambda a, b: b * jitter)


class FakeStream:
    """`podman events` that ends with code 1 after living `lifetime` seconds of fake time."""

    def __init__(self, time_: FakeTime, lifetime: float, started: list[float]) -> None:
        self.time, self.lifetime, self.started = time_, lifetime, started
        self.argv = ["podman", "events"]
        self.stderr_tail: list[str] = []

    def start(self) -> None:
        self.started.append(self.time.now)
        if len(self.started) > 50:  # restarting without waiting: end the run, the test fails
            self.time.stop.set()

    def follow(self) -> int:
        self.time.now += self.lifetime
        return 1

    def stop(self) -> None:
        pass


def follow_events(lifetimes: list[float], max_backoff: float, jitter: float = 1.0) -> tuple[list[float], list[float]]:
    """Runs follow_events with streams of the given lifetimes; (waits asked for, stream start times)."""
    stop = threading.Event()
    fake = FakeTime(len(lifetimes), stop)
    started: list[float] = []
    lives = iter(lifetimes)
    r = Registrar(
        settings_from(args(max_backoff=max_backoff), CONFIG),
        Corrosion("127.0.0.1:9"),
        EngineCLI("podman"),
        stop,
        clock=fake.clock(jitter),
        new_stream=lambda engine, on_line: FakeStream(fake, next(lives, 0.0), started),  # type: ignore[arg-type,return-value]
    )
    r.follow_events()
    return fake.sleeps, started


def test_an_event_stream_that_keeps_ending_is_restarted_after_a_capped_doubling_wait() -> None:
    sleeps, started = follow_events([0.0] * 6, max_backoff=2)
    assert sleeps == [1, 2, 2, 2, 2, 2]  # never a tight loop, never more than --max-backoff
    # each restart comes only after the wait (the clock moves only in sleeps here)
    assert [b - a for a, b in zip(started, started[1:], strict=False)] == sleeps[:-1]
    floor, _ = follow_events([0.0] * 4, max_backoff=8, jitter=0.75)
    assert floor == [0.75, 1.5, 3, 6]


def test_a_stream_that_lived_a_minute_starts_the_backoff_over() -> None:
    sleeps, _ = follow_events([0, 0, 0, 61, 0, 59, 0], max_backoff=30)
    assert sleeps == [1, 2, 4, 1, 2, 4, 8]


class ScriptedRegistrar(Registrar):
    """A registrar whose reconcile fails or succeeds as scripted ("fail" raises what an
    unreachable Corrosion raises); the events thread runs a stream that waits for the stop."""

    def __init__(self, script: list[str], stop: threading.Event, clock: Clock) -> None:
        class Quiet:
            argv = ["podman", "events"]
            stderr_tail: list[str] = []

            def start(self) -> None:
                pass

            def follow(self) -> int:
                stop.wait(10)
                return 0

            def stop(self) -> None:
                pass

        super().__init__(
            settings_from(args(max_backoff=8.0), CONFIG),
            Corrosion("127.0.0.1:9"),
            EngineCLI("podman"),
            stop,
            clock=clock,
            new_stream=lambda engine, on_line: Quiet(),  # type: ignore[arg-type,return-value]
        )
        self.script = script
        self.attempts = 0

    def reconcile(self) -> None:
        self.attempts += 1
        outcome = self.script.pop(0) if self.script else "stop"
        if outcome == "fail":
            raise CorrosionError("Corrosion API at http://127.0.0.1:9 unreachable: connection refused")
        if outcome == "stop":
            self.stop.set()
            return
        self.pending.request_reconcile()  # the next attempt at once (as after a stream restart)


def test_failed_writes_are_retried_after_a_capped_doubling_wait_that_a_success_resets() -> None:
    stop = threading.Event()
    fake = FakeTime(100, stop)
    r = ScriptedRegistrar(["fail"] * 5 + ["ok"] + ["fail"] * 2, stop, fake.clock())
    done = threading.Thread(target=r.run)
    done.start()
    done.join(20)
    assert not done.is_alive()
    assert fake.sleeps == [1, 2, 4, 8, 8, 1, 2]
    assert r.attempts == 9
