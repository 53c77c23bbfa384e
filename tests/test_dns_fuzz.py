"""Random and mutated packets: nothing escapes, nothing hangs, every reply parses."""

from __future__ import annotations

import random
import socket
import struct
import time

import dns.message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jiji_dns.responder import FORWARD, Responder
from jiji_dns.table import Container

from tests import harness
from tests.conftest import dig

PACKETS = 100_000


def loaded_responder() -> Responder:
    r = Responder("jiji", 60, 5)
    r.table.load([Container(f"c{i}", "shop", "api", f"s{i}", f"10.210.{i}.2", i, "primary") for i in range(40)])
    r.ready = True
    return r


def seeds() -> list[bytes]:
    out = []
    for name, qtype, edns in [
        ("shop-api.jiji", "A", 0),
        ("SHOP-api-primary.jiji", "AAAA", -1),
        ("nope.jiji", "TXT", 0),
        ("example.test", "A", 0),
        ("jiji", "SOA", -1),
        ("_srv._tcp.shop-api.jiji", "SRV", 0),
        ("shop-api.jiji", "ANY", 0),
    ]:
        q = dns.message.make_query(name, qtype, use_edns=edns, want_dnssec=edns == 0)
        out.append(q.to_wire())
    return out


def mutate(rng: random.Random, packet: bytes) -> bytes:
    data = bytearray(packet)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        if op == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op == 1 and data:
            del data[rng.randrange(len(data)) :]
        elif op == 2:
            data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        elif op == 3 and len(data) > 12:
            data[rng.choice([2, 3, 4, 5, 10, 11])] = rng.randrange(256)
        elif op == 4:
            data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 30)))
        elif op == 5 and len(data) > 14:
            i = rng.randrange(12, len(data))
            data[i] = rng.choice([0, 63, 64, 0xC0, 0xFF])
    return bytes(data)


def check(responder: Responder, packet: bytes, recursion: bool, udp: bool) -> None:
    reply = responder.answer(packet, recursion, udp)
    if reply is None or reply is FORWARD:
        return
    assert isinstance(reply, bytes)
    assert reply[:2] == packet[:2]
    assert reply[2] & 0x80, "replies have QR set"
    dns.message.from_wire(reply)  # raises if the reply does not parse
    if udp:
        assert len(reply) <= 1232 or (len(packet) >= 12 and len(reply) <= 1232)


def test_100k_random_and_mutated_packets() -> None:
    responder = loaded_responder()
    rng = random.Random(20261122)
    corpus = seeds()
    slowest = 0.0
    started = time.monotonic()
    for n in range(PACKETS):
        if n % 4 == 0:
            packet = bytes(rng.randrange(256) for _ in range(rng.randint(0, 80)))
        else:
            packet = mutate(rng, rng.choice(corpus))
        t0 = time.perf_counter()
        check(responder, packet, recursion=bool(n & 1), udp=bool(n & 2))
        slowest = max(slowest, time.perf_counter() - t0)
        assert time.monotonic() - started < 300, "fuzz run took too long"
    assert slowest < 0.5, f"one packet took {slowest:.3f}s"


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.binary(min_size=12, max_size=12),
    labels=st.lists(st.binary(min_size=0, max_size=70), max_size=6),
    tail=st.binary(max_size=40),
)
def test_structured_queries_never_escape(header: bytes, labels: list[bytes], tail: bytes) -> None:
    name = b"".join(bytes([len(label) & 0xFF]) + label for label in labels) + b"\x00"
    check(FUZZ_RESPONDER, header + name + tail, recursion=True, udp=True)


FUZZ_RESPONDER = loaded_responder()


def test_the_daemon_keeps_answering_after_garbage(pyz, workdir, corrosion) -> None:  # type: ignore[no-untyped-def]
    d = harness.DnsDaemon(pyz, workdir, corrosion.api)
    try:
        d.wait_ready()
        rng = random.Random(7)
        corpus = seeds()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for n in range(5000):
                s.sendto(mutate(rng, rng.choice(corpus)), (d.host, d.port))
                if n % 200 == 0:
                    time.sleep(0.01)
        with socket.create_connection((d.host, d.port), timeout=5) as t:  # garbage over TCP too
            t.sendall(struct.pack(">H", 5) + b"\x00\x01\x02\x03\x04" + struct.pack(">H", 3) + b"abc")
        assert d.proc.poll() is None
        assert dig(d.port, "nope.jiji").status == "NXDOMAIN"
        assert "Traceback" not in d.log()
    finally:
        d.close()
