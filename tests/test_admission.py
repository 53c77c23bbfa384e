"""The just-in-time admission decision (jiji_ops/admission.py): refusals, replays across restarts,
and what a flood of forged initiations may cost. Opening is stood in by a counting function: the
real one (handshake.open_initiation) is tested against wireguard-go in test_handshake.py."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
from jiji_ops import cookies, jit
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
    assert verdicts == ["install", "unknown", "revoked", "install", "expired", "forged"]  # no mac1 check here: opened


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


def test_one_proven_source_flooding_costs_its_own_budget_and_others_still_get_in() -> None:
    """A source that really is at its address (it got a cookie, so its mac2 is valid) may flood:
    past the overall budget it is held to 20 a second (5 at once), and a laptop elsewhere, proven
    as well, still gets in."""
    jar = cookies.CookieJar(b"P" * 32, now=0.0)
    opener = ShapedOpener()
    a = Admission(opener, DECLARED.get, ReplayMemory(), cookies=jar, now=0.0)
    attacker = jar.cookie("203.0.113.9", 40000, now=0.0)
    refused = 0
    for i in range(10_000):  # 10,000 initiations with a valid mac2 from one address in one second
        v = a.decide(knock(shaped(bytes([i % 256]) * 31 + b"\0", 100, attacker), "203.0.113.9"), now=i / 10_000, wall=0)
        refused += v.reason == "rate-source"
    assert opener.calls <= 100 + 50 + 5 + 20, opener.calls  # the overall budget, then its own
    assert refused >= 10_000 - 175
    laptop = shaped(LAPTOP.public_key, 100, jar.cookie("192.0.2.1", 40000, now=1.0))
    assert a.decide(knock(laptop, "192.0.2.1"), now=1.0, wall=0).install


def test_forged_initiations_from_a_laptops_address_do_not_lock_it_out() -> None:
    """Limiting by a source address no one has proven would let anyone who knows a laptop's
    address spend the laptop's tokens: the per-source limit is only for proven sources."""
    jar = cookies.CookieJar(b"P" * 32, now=0.0)
    a = Admission(ShapedOpener(), DECLARED.get, ReplayMemory(), cookies=jar, overall=(1.0, 1.0), now=0.0)
    for i in range(1000):  # forged from the laptop's address, no mac2: cookies (to the laptop)
        a.decide(knock(shaped(bytes([i % 256]) * 31 + b"\0", 100), "192.0.2.1"), now=0.5, wall=0)
    laptop = shaped(LAPTOP.public_key, 100, jar.cookie("192.0.2.1", 40000, now=0.5))
    assert a.decide(knock(laptop, "192.0.2.1"), now=0.5, wall=0).install


def test_a_flood_from_many_sources_is_bounded_overall_and_in_memory() -> None:
    a, opener = admission(per_source=(2.0, 5.0), overall=(50.0, 100.0), max_sources=1000)
    for i in range(50_000):  # 50,000 forged initiations, each from its own address, over 2 s
        a.decide(knock(message(b"F" * 32, 100), f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"), now=i / 25_000, wall=0)
    assert opener.calls <= 100 + 50 * 2 + 1, opener.calls  # the overall burst and 2 s of its rate
    assert len(a.sources) == 0  # nothing is kept for a source no one has proven
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


# Cookies under load (jiji_ops/cookies.py). Messages here are full 148-byte initiations in shape
# (type 1, sender index, the rest stand-ins), so mac1 and mac2 sit where WireGuard puts them.
def shaped(key: bytes, seconds: int, cookie: bytes | None = None) -> bytes:
    body = b"\x01\0\0\0" + struct.pack("<I", 7) + key + tai64n(seconds)
    body += b"\0" * (116 - len(body)) + b"M" * 16  # mac1 (the stand-in check below takes it)
    mac2 = hashlib.blake2s(body, key=cookie, digest_size=16).digest() if cookie else b"\0" * 16
    return body + mac2


class ShapedOpener(Opener):
    def __call__(self, m: bytes) -> Initiation:
        self.calls += 1
        return Initiation(7, m[8:40], m[40:52])


def test_xchacha20_poly1305_known_answers() -> None:
    # draft-irtf-cfrg-xchacha-03: the HChaCha20 vector (2.2.1) and the AEAD vector (A.3.1).
    assert cookies.hchacha20(bytes(range(32)), bytes.fromhex("000000090000004a0000000031415927")).hex() == (
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    )
    plaintext = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future,"
        b" sunscreen would be it."
    )
    key, nonce, aad = bytes(range(0x80, 0xA0)), bytes(range(0x40, 0x58)), bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    sealed = cookies.xaead_seal(key, nonce, plaintext, aad)
    assert sealed[:16].hex() == "bd6d179d3e83d43b9576579493c0e939" and sealed[-16:].hex() == "c0875924c1c7987947deafd8780acf49"
    assert cookies.xaead_open(key, nonce, sealed, aad) == plaintext
    assert cookies.xaead_open(key, nonce, sealed, aad + b"x") is None


def test_a_cookie_proves_its_source_for_two_secret_lifetimes_at_most() -> None:
    jar = cookies.CookieJar(b"P" * 32, now=0.0)
    cookie = jar.cookie("192.0.2.10", 40000, now=1.0)
    m = shaped(LAPTOP.public_key, 100, cookie)
    assert jar.mac2_ok(m, "192.0.2.10", 40000, now=2.0)
    assert not jar.mac2_ok(m, "192.0.2.11", 40000, now=2.0)  # another address
    assert not jar.mac2_ok(m, "192.0.2.10", 40001, now=2.0)  # another port
    assert not jar.mac2_ok(shaped(LAPTOP.public_key, 100), "192.0.2.10", 40000, now=2.0)  # no mac2
    assert jar.mac2_ok(m, "192.0.2.10", 40000, now=cookies.SECRET_LIFETIME + 1)  # the secret before
    assert not jar.mac2_ok(m, "192.0.2.10", 40000, now=2 * cookies.SECRET_LIFETIME + 2)
    # The reply: type 3, the initiator's sender index, and the cookie sealed to mac1.
    reply = jar.reply(m, "192.0.2.10", 40000, now=2 * cookies.SECRET_LIFETIME + 3)
    assert len(reply) == cookies.COOKIE_REPLY_SIZE and reply[:4] == b"\x03\0\0\0" and reply[4:8] == m[4:8]
    opened = cookies.xaead_open(hashlib.blake2s(cookies.LABEL_COOKIE + b"P" * 32).digest(), reply[8:32], reply[32:], m[116:132])
    assert opened == jar.cookie("192.0.2.10", 40000, now=2 * cookies.SECRET_LIFETIME + 3)


def test_under_load_forged_sources_get_cookies_and_a_proven_source_gets_in() -> None:
    jar = cookies.CookieJar(b"P" * 32, now=0.0)
    opener = ShapedOpener()
    a = Admission(opener, DECLARED.get, ReplayMemory(), cookies=jar, overall=(1.0, 1.0),
                  cookie_replies=(100.0, 10.0), now=0.0)  # fmt: skip
    assert a.decide(knock(shaped(b"U" * 32, 1), "203.0.113.1"), now=0.0, wall=0).reason == "unknown"  # the budget's one
    # A flood from 1,000 forged sources: cookie replies while their budget lasts, then nothing;
    # nothing is opened.
    reasons = [a.decide(knock(shaped(os.urandom(32), 1), f"10.9.{i // 250}.{i % 250}"), now=0.1, wall=0).reason for i in range(1000)]
    assert reasons.count("cookie") == 10 and reasons.count("rate-global") == 990 and opener.calls == 1
    # The laptop, at its real address, is answered with a cookie too once the budget refills; its
    # retransmit with mac2 is opened from the verified budget, flood or not.
    assert a.decide(knock(shaped(LAPTOP.public_key, 100), "192.0.2.10"), now=0.5, wall=0).reason == "cookie"
    retry = shaped(LAPTOP.public_key, 105, jar.cookie("192.0.2.10", 40000, now=5.5))
    assert a.decide(knock(retry, "192.0.2.10"), now=5.5, wall=0).reason == "install"
    # The same mac2 from another address is worth nothing.
    assert a.decide(knock(retry, "198.51.100.9"), now=5.6, wall=0).reason in ("cookie", "rate-global")


def test_junk_costs_a_mac1_and_takes_no_token() -> None:
    opener = ShapedOpener()
    a = Admission(opener, DECLARED.get, ReplayMemory(), mac1_problem=lambda m: None if m[116:132] == b"M" * 16 else "mac1",
                  overall=(1.0, 1.0), now=0.0)  # fmt: skip
    junk = bytearray(shaped(b"U" * 32, 1))
    junk[116:132] = os.urandom(16)
    assert {a.decide(knock(bytes(junk), "192.0.2.10"), now=0.0, wall=0).reason for _ in range(500)} == {"junk"}
    assert a.decide(knock(shaped(LAPTOP.public_key, 100), "192.0.2.10"), now=0.0, wall=0).reason == "install"
    assert opener.calls == 1
