"""Forwarding under attack: fresh source ports, spoofed replies, wrong questions, dead upstreams.

The upstream here is a scripted UDP server on loopback that records where each forwarded query
came from and answers as each test tells it to, including as the attacker would: replies sent
from the upstream's own address and port are exactly what an off-path spoofer forges.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rrset
import pytest

from tests import harness
from tests.conftest import dig

Reply = Callable[[socket.socket, bytes, tuple[str, int], int], None]


def answer_for(query: bytes, ip: str, name: str | None = None, qid: int | None = None) -> bytes:
    """A reply to `query` with one A record; `name` replaces the question, `qid` the id."""
    q = dns.message.from_wire(query)
    if name is not None:
        q = dns.message.make_query(name, "A")
        q.id = dns.message.from_wire(query).id
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(r.question[0].name, 60, "IN", "A", ip))
    if qid is not None:
        r.id = qid
    return r.to_wire()


class ScriptedUpstream:
    """A UDP 'resolver' on 127.0.0.1 that calls `reply(sock, query, source, n)` per query."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.sources: list[tuple[str, int]] = []
        self.ids: list[int] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        while not self._stop:
            try:
                query, source = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.sources.append(source)
            self.ids.append(struct.unpack(">H", query[:2])[0])
            self.reply(self.sock, query, source, len(self.sources))

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


def forwarding_daemon(pyz: Path, workdir: Path, upstreams: list[str], *extra: str) -> harness.DnsDaemon:
    # Corrosion is not needed to forward: an address nobody listens on keeps the table empty.
    nowhere = f"127.0.0.1:{harness.free_port()}"
    return harness.DnsDaemon(pyz, workdir, nowhere, upstreams=upstreams, extra=list(extra))


@pytest.fixture
def honest(pyz: Path, workdir: Path) -> Iterator[tuple[ScriptedUpstream, harness.DnsDaemon]]:
    up = ScriptedUpstream(lambda s, q, src, n: s.sendto(answer_for(q, "198.51.100.7"), src))
    d = forwarding_daemon(pyz, workdir, [up.address])
    yield up, d
    d.close()
    up.close()


def ask_a(port: int, name: str, timeout: float = 3, qid: int | None = None) -> list[str]:
    q = dns.message.make_query(name, "A")
    if qid is not None:
        q.id = qid
    r = dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)
    return sorted(rr.address for rrset in r.answer for rr in rrset)


def test_1000_forwards_leave_from_at_least_900_source_ports(
    honest: tuple[ScriptedUpstream, harness.DnsDaemon],
) -> None:
    up, d = honest
    for i in range(1000):
        assert ask_a(d.port, f"n{i}.upstream.test") == ["198.51.100.7"]
    ports = {port for _, port in up.sources}
    assert len(up.sources) == 1000
    assert len(ports) >= 900, f"only {len(ports)} distinct source ports"
    # Forwarded ids are not the clients' and not a simple sequence.
    assert len(set(up.ids)) >= 950


def test_a_spray_of_all_65536_ids_to_the_last_port_is_never_accepted(pyz: Path, workdir: Path) -> None:
    # The upstream learns the source port of each forward and, for the next query, sprays a
    # forged answer for every id to that port from its own address and port before answering
    # honestly: with one shared port (the old forwarder) the spray won 4 of 5 times.
    forged = 0

    def spray_then_answer(sock: socket.socket, query: bytes, source: tuple[str, int], n: int) -> None:
        if n > 1:
            previous = up.sources[-2]
            template = bytearray(answer_for(query, "6.6.6.6"))
            for qid in range(65536):
                template[0:2] = qid.to_bytes(2, "big")
                try:
                    sock.sendto(template, previous)
                except OSError:
                    pass
        sock.sendto(answer_for(query, "198.51.100.7"), source)

    up = ScriptedUpstream(spray_then_answer)
    # The spray alone takes about 1 s of Python on a busy machine: the honest answer must still
    # arrive within the forward's timeout, or the test sees SERVFAIL instead of a verdict.
    d = forwarding_daemon(pyz, workdir, [up.address], "--upstream-timeout", "5")
    try:
        for i in range(6):
            got = ask_a(d.port, f"victim{i}.upstream.test", timeout=5)
            forged += got == ["6.6.6.6"]
            assert got in (["198.51.100.7"], ["6.6.6.6"])
        assert forged == 0
    finally:
        d.close()
        up.close()


def test_a_reply_for_another_question_is_dropped(pyz: Path, workdir: Path) -> None:
    # Right id, right address and port, wrong question: dropped; the honest reply after it wins.
    def evil_first(sock: socket.socket, query: bytes, source: tuple[str, int], n: int) -> None:
        qid = struct.unpack(">H", query[:2])[0]
        sock.sendto(answer_for(query, "6.6.6.6", name="evil.example", qid=qid), source)
        time.sleep(0.05)
        sock.sendto(answer_for(query, "198.51.100.7"), source)

    up = ScriptedUpstream(evil_first)
    d = forwarding_daemon(pyz, workdir, [up.address])
    try:
        assert ask_a(d.port, "www.upstream.test") == ["198.51.100.7"]
        assert d.stats()["forward_replies_dropped"] == 1
    finally:
        d.close()
        up.close()


def test_a_reply_with_the_question_in_other_case_is_accepted(pyz: Path, workdir: Path) -> None:
    def upper(sock: socket.socket, query: bytes, source: tuple[str, int], n: int) -> None:
        reply = bytearray(answer_for(query, "198.51.100.7"))
        end = 12 + query[12:].index(b"\x00") + 1
        reply[12:end] = bytes(reply[12:end]).upper()
        sock.sendto(bytes(reply), source)

    up = ScriptedUpstream(upper)
    d = forwarding_daemon(pyz, workdir, [up.address])
    try:
        assert ask_a(d.port, "www.upstream.test") == ["198.51.100.7"]
    finally:
        d.close()
        up.close()


def test_a_reply_with_a_wrong_id_is_dropped(pyz: Path, workdir: Path) -> None:
    def wrong_id(sock: socket.socket, query: bytes, source: tuple[str, int], n: int) -> None:
        qid = struct.unpack(">H", query[:2])[0]
        sock.sendto(answer_for(query, "6.6.6.6", qid=qid ^ 1), source)

    up = ScriptedUpstream(wrong_id)
    d = forwarding_daemon(pyz, workdir, [up.address])
    try:
        assert dig(d.port, "www.upstream.test").status == "SERVFAIL"
        assert d.stats()["forward_replies_dropped"] == 1
    finally:
        d.close()
        up.close()


def test_port_unreachable_fails_over_at_once(pyz: Path, workdir: Path, upstream: harness.Dnsmasq) -> None:
    dead = f"127.0.0.1:{harness.free_port(socket.SOCK_DGRAM)}"
    d = forwarding_daemon(pyz, workdir, [dead, upstream.address], "--upstream-timeout", "5")
    try:
        started = time.monotonic()
        assert ask_a(d.port, "www.upstream.test", timeout=8) == ["198.51.100.7"]
        # Waiting for the dead upstream would take its whole timeout (5 s); failing over at once
        # takes a round trip. The bound sits well between the two.
        assert time.monotonic() - started < 2.5, "waited for the dead upstream's timeout"
        assert d.stats()["upstream_failures"] == 1
    finally:
        d.close()


def test_a_long_forwarded_name_with_a_dead_upstream_gets_formerr(pyz: Path, workdir: Path) -> None:
    dead = f"127.0.0.1:{harness.free_port(socket.SOCK_DGRAM)}"
    d = forwarding_daemon(pyz, workdir, [dead])
    try:
        name = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\x05upstr\x00"  # 263 bytes
        packet = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(3)
            s.sendto(packet, ("127.0.0.1", d.port))
            reply = s.recv(4096)
        assert reply[:2] == b"\x42\x42" and reply[3] & 0x0F == 1  # FORMERR
        assert reply[4:6] == b"\x00\x00", "a name we refuse is not echoed"
    finally:
        d.close()


def test_tcp_forwards_share_the_inflight_limit(pyz: Path, workdir: Path) -> None:
    # An upstream TCP server that holds every query for a while and counts how many it holds.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    port = listener.getsockname()[1]
    held = {"now": 0, "max": 0}
    lock = threading.Lock()

    def serve(conn: socket.socket) -> None:
        with lock:
            held["now"] += 1
            held["max"] = max(held["max"], held["now"])
        try:
            conn.settimeout(5)
            size = struct.unpack(">H", conn.recv(2))[0]
            query = b""
            while len(query) < size:
                query += conn.recv(size - len(query))
            time.sleep(0.5)
            reply = answer_for(query, "198.51.100.7")
            conn.sendall(struct.pack(">H", len(reply)) + reply)
        except OSError:
            pass
        finally:
            conn.close()
            with lock:
                held["now"] -= 1

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    d = forwarding_daemon(pyz, workdir, [f"127.0.0.1:{port}"], "--max-inflight", "16")
    try:
        clients = []
        for i in range(100):
            c = socket.create_connection(("127.0.0.1", d.port), timeout=10)
            q = dns.message.make_query(f"t{i}.upstream.test", "A").to_wire()
            c.sendall(struct.pack(">H", len(q)) + q)
            clients.append(c)
        rcodes = []
        for c in clients:
            with c:
                size = struct.unpack(">H", c.recv(2))[0]
                data = b""
                while len(data) < size:
                    data += c.recv(size - len(data))
                rcodes.append(data[3] & 0x0F)
        assert held["max"] <= 16, f"{held['max']} TCP forwards at once with a limit of 16"
        assert rcodes.count(0) >= 16 and set(rcodes) <= {0, 2}
        assert d.stats()["forwards_dropped_busy"] >= 1
    finally:
        d.close()
        listener.close()
