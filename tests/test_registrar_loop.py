"""The registrar's loop parts that need no engine or Corrosion: the pending set's bound, the
backoff's cap, and which event lines lead to an inspect."""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path

import pytest
from jiji_ops.corrosion import Corrosion
from jiji_ops.enginecli import EngineCLI
from jiji_ops.registrar import Backoff, Pending, Registrar, settings_from
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
