"""The just-in-time admission decision (jiji_ops/admission.py): refusals, replays across restarts,
and what a flood of forged initiations may cost. Opening is stood in by a counting function: the
real one (handshake.open_initiation) is tested against wireguard-go in test_handshake.py."""

from __future__ import annotations

import base64
import json
import os
import struct
from pathlib import Path

import pytest
from jiji_ops import jit
from jiji_ops.admission import AccessPeer, Admission, ReplayMemory
from jiji_ops.handshake import Initiation, Refused
from jiji_ops.initiations import Knock

LAPTOP = AccessPeer(b"L" * 32, "10.211.0.1")
RUNNER = AccessPeer(b"R" * 32, "10.211.0.2", expires_at=1_000.0)
GONE = AccessPeer(b"G" * 32, "10.211.0.3", revoked=True)
DECLARED = {p.public_key: p for p in (LAPTOP, RUNNER, GONE)}


def tai64n(seconds: int) -> bytes:
    return struct.pack(">QI", 0x400000000000000A + seconds, 0)


def message(key: bytes, seconds: int) -> bytes:
    """A stand-in initiation: type 1, the key and the timestamp in the clear."""
    return b"\x01" + key + tai64n(seconds)


class Opener:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, m: bytes) -> Initiation:
        self.calls += 1  # each real call is two X25519 operations
        if m[:1] != b"\x01" or len(m) != 45:
            raise Refused("not a handshake initiation")
        return Initiation(0, m[1:33], m[33:45])


def knock(m: bytes, source: str = "192.0.2.10") -> Knock:
    return Knock(source, 40000, "198.18.0.10", 51820, m)


def admission(memory: ReplayMemory | None = None, **limits: object) -> tuple[Admission, Opener]:
    opener = Opener()
    return Admission(opener, DECLARED.get, memory or ReplayMemory(), **limits), opener  # type: ignore[arg-type]


def test_declared_keys_get_in_and_the_others_are_refused_with_a_reason() -> None:
    a, _ = admission()
    verdicts = [
        a.decide(knock(message(LAPTOP.public_key, 100), "192.0.2.1"), now=0, wall=500).reason,
        a.decide(knock(message(b"U" * 32, 100), "192.0.2.2"), now=0, wall=500).reason,
        a.decide(knock(message(GONE.public_key, 100), "192.0.2.3"), now=0, wall=500).reason,
        a.decide(knock(message(RUNNER.public_key, 100), "192.0.2.4"), now=0, wall=500).reason,
        a.decide(knock(message(RUNNER.public_key, 101), "192.0.2.4"), now=1, wall=1_000).reason,
        a.decide(knock(b"\x02" + b"x" * 44, "192.0.2.5"), now=0, wall=500).reason,
    ]
    assert verdicts == ["install", "unknown", "revoked", "install", "expired", "junk"]


def test_a_timestamp_not_newer_than_the_last_accepted_is_a_replay_even_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "timestamps.json"
    a, _ = admission(ReplayMemory(path))
    assert a.decide(knock(message(LAPTOP.public_key, 100)), now=0, wall=0).install
    assert a.decide(knock(message(LAPTOP.public_key, 100)), now=1, wall=0).reason == "replay"
    assert a.decide(knock(message(LAPTOP.public_key, 99)), now=2, wall=0).reason == "replay"
    # The daemon restarts (and the peer left the kernel, so WireGuard forgot the timestamp too).
    b, _ = admission(ReplayMemory(path))
    assert b.decide(knock(message(LAPTOP.public_key, 100)), now=0, wall=0).reason == "replay"
    assert b.decide(knock(message(LAPTOP.public_key, 101)), now=0, wall=0).install
    memory = ReplayMemory(path)
    memory.forget({LAPTOP.public_key})
    assert memory.accept(LAPTOP.public_key, tai64n(1))


def test_one_source_flooding_costs_its_own_budget_and_others_still_get_in() -> None:
    a, opener = admission()  # the defaults: 20 a second and 5 at once per source
    refused = 0
    for i in range(10_000):  # 10,000 forged initiations from one address in one second
        v = a.decide(knock(message(bytes([i % 256]) * 32, 100), "203.0.113.9"), now=i / 10_000, wall=0)
        refused += v.reason == "rate-source"
    assert opener.calls <= 5 + 20, opener.calls  # its burst, and what its rate refills in 1 s
    assert refused >= 10_000 - 25
    assert a.decide(knock(message(LAPTOP.public_key, 100), "192.0.2.1"), now=1.0, wall=0).install


def test_a_flood_from_many_sources_is_bounded_overall_and_in_memory() -> None:
    a, opener = admission(per_source=(2.0, 5.0), overall=(50.0, 100.0), max_sources=1000)
    for i in range(50_000):  # 50,000 forged initiations, each from its own address, over 2 s
        a.decide(knock(message(b"F" * 32, 100), f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"), now=i / 25_000, wall=0)
    assert opener.calls <= 100 + 50 * 2 + 1, opener.calls  # the overall burst and 2 s of its rate
    assert len(a.sources) == 1000
    # Once the flood stops, the budget refills and a declared peer gets in.
    assert a.decide(knock(message(LAPTOP.public_key, 100), "192.0.2.1"), now=3.0, wall=0).install


def test_the_declared_peers_file_is_read_again_when_it_changes_and_a_bad_one_keeps_the_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "peers.json"
    peers = jit.DeclaredPeers(path)
    assert peers.lookup(LAPTOP.public_key) is None  # no file: nobody
    key = base64.b64encode(LAPTOP.public_key).decode()
    path.write_text(json.dumps([{"public_key": key, "address": "10.211.0.1", "expires_at": 2000.5}]))
    os.utime(path, (1, 1))
    assert peers.lookup(LAPTOP.public_key) == AccessPeer(LAPTOP.public_key, "10.211.0.1", 2000.5)
    other = base64.b64encode(b"O" * 32).decode()
    for n, broken in enumerate((
        "{broken",
        '[{"address": "10.211.0.1"}]',
        '[{"public_key": "not base64!", "address": "10.211.0.1"}]',
        f'[{{"public_key": "{base64.b64encode(b"short").decode()}", "address": "10.211.0.1"}}]',
        f'[{{"public_key": "{other}", "address": "10.211.0.1/32; rm -rf /"}}]',
        f'[{{"public_key": "{other}", "address": "10.211.0.1", "expires_at": "soon"}}]',
        "[1]",
    )):
        path.write_text(broken)
        os.utime(path, (2, 100 + n))  # a new modification time for each
        assert peers.lookup(LAPTOP.public_key) == AccessPeer(LAPTOP.public_key, "10.211.0.1", 2000.5)
        assert "event=jit-peers-unreadable" in capsys.readouterr().out
    path.write_text("[]")
    os.utime(path, (3, 1000))
    assert peers.lookup(LAPTOP.public_key) is None  # removed from the file: refused from now on
