"""jiji-dns on real sockets, asked by real clients (dig, dnspython), fed by a real Corrosion node."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests import harness
from tests.conftest import dig

MANY = 60  # more A records than fit a 512-byte reply


@pytest.fixture(scope="module", autouse=True)
def rows(corrosion: harness.CorrosionNode, daemon: harness.DnsDaemon) -> None:
    corrosion.add_container("c-api-1", "shop", "api", "s1", "10.210.0.2", 100, "primary")
    corrosion.add_container("c-api-2", "shop", "api", "s2", "10.210.1.2", 100, "replica")
    corrosion.add_container("c-blog-api", "blog", "api", "s1", "10.210.0.9", 100)
    corrosion.add_container("c-sick", "shop", "worker", "s1", "10.210.0.3", 100, health="unhealthy")
    for i in range(MANY):
        corrosion.add_container(f"c-many-{i}", "shop", "many", f"s{i}", f"10.210.{i}.20", 1)
    harness.wait_until(
        lambda: len(dig(daemon.port, "shop-many.jiji", "A", "+tcp").answers) == MANY, 10, "rows to reach jiji-dns"
    )


def ask(daemon: harness.DnsDaemon, name: str, qtype: str = "A", tcp: bool = False, **kw: object) -> dns.message.Message:
    q = dns.message.make_query(name, qtype, **kw)  # type: ignore[arg-type]
    if tcp:
        return dns.query.tcp(q, daemon.host, port=daemon.port, timeout=3)
    return dns.query.udp(q, daemon.host, port=daemon.port, timeout=3)


def a_records(msg: dns.message.Message) -> list[str]:
    return sorted(rr.address for rrset in msg.answer for rr in rrset if rr.rdtype == dns.rdatatype.A)


def test_service_name_answers_healthy_containers_authoritatively(daemon: harness.DnsDaemon) -> None:
    r = dig(daemon.port, "shop-api.jiji")
    assert r.status == "NOERROR"
    assert "aa" in r.flags
    assert sorted(a[2] for a in r.answers) == ["10.210.0.2", "10.210.1.2"]
    assert all(a[1] == "A" for a in r.answers)


def test_ttl_is_the_configured_one(daemon: harness.DnsDaemon) -> None:
    msg = ask(daemon, "shop-api.jiji")
    assert {rrset.ttl for rrset in msg.answer} == {60}


def test_instance_name_and_case_insensitivity(daemon: harness.DnsDaemon) -> None:
    assert [a[2] for a in dig(daemon.port, "SHOP-API-Primary.JIJI").answers] == ["10.210.0.2"]
    assert [a[2] for a in dig(daemon.port, "shop-api-replica.jiji.").answers] == ["10.210.1.2"]


def test_question_case_is_echoed_for_0x20_resolvers(daemon: harness.DnsDaemon) -> None:
    msg = ask(daemon, "ShOp-ApI.jIjI")
    assert msg.question[0].name.to_text() == "ShOp-ApI.jIjI."
    assert a_records(msg) == ["10.210.0.2", "10.210.1.2"]


def test_two_projects_with_the_same_service_do_not_collide(daemon: harness.DnsDaemon) -> None:
    assert [a[2] for a in dig(daemon.port, "blog-api.jiji").answers] == ["10.210.0.9"]


def test_unhealthy_containers_are_not_served(daemon: harness.DnsDaemon) -> None:
    r = dig(daemon.port, "shop-worker.jiji")
    assert r.status == "NXDOMAIN"


def test_nxdomain_and_nodata_carry_an_soa(daemon: harness.DnsDaemon) -> None:
    nx = dig(daemon.port, "nope-nothing.jiji")
    assert nx.status == "NXDOMAIN" and "aa" in nx.flags and not nx.answers
    assert [a[1] for a in nx.authority] == ["SOA"] and nx.authority[0][0] == "jiji."
    nodata = dig(daemon.port, "shop-api.jiji", "AAAA")
    assert nodata.status == "NOERROR" and not nodata.answers
    assert [a[1] for a in nodata.authority] == ["SOA"]
    negative_ttl = ask(daemon, "nope.jiji").authority[0][0].minimum
    assert negative_ttl == 5


def test_soa_of_the_zone_apex(daemon: harness.DnsDaemon) -> None:
    msg = ask(daemon, "jiji", "SOA")
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.answer[0].rdtype == dns.rdatatype.SOA


def test_any_answers_the_addresses(daemon: harness.DnsDaemon) -> None:
    r = dig(daemon.port, "shop-api.jiji", "ANY")
    assert r.status == "NOERROR"
    assert sorted(a[2] for a in r.answers) == ["10.210.0.2", "10.210.1.2"]


def test_rd_is_echoed_and_ra_set_for_clients_allowed_to_recurse(daemon: harness.DnsDaemon) -> None:
    assert {"rd", "ra"} <= dig(daemon.port, "shop-api.jiji").flags
    flags = dig(daemon.port, "shop-api.jiji", "A", "+nordflag").flags
    assert "rd" not in flags and "ra" in flags


def test_edns_payload_and_opt_in_reply(daemon: harness.DnsDaemon) -> None:
    assert dig(daemon.port, "shop-api.jiji").edns_udp == 1232
    assert dig(daemon.port, "shop-api.jiji", "A", "+noedns").edns_udp is None
    msg = ask(daemon, "shop-api.jiji", use_edns=0, payload=4096, want_dnssec=True)
    assert msg.edns == 0 and msg.payload == 1232 and msg.ednsflags & dns.flags.DO


def test_unknown_edns_version_gets_badvers(daemon: harness.DnsDaemon) -> None:
    msg = ask(daemon, "shop-api.jiji", use_edns=1)
    assert msg.rcode() == dns.rcode.BADVERS


def test_large_answer_sets_truncate_over_udp_and_complete_over_tcp(daemon: harness.DnsDaemon) -> None:
    plain = dig(daemon.port, "shop-many.jiji", "A", "+noedns", "+ignore")
    assert "tc" in plain.flags and not plain.answers
    edns = ask(daemon, "shop-many.jiji", use_edns=0, payload=4096)
    assert len(a_records(edns)) == MANY  # 60 records fit the 1232 bytes we allow
    tcp = dig(daemon.port, "shop-many.jiji", "A", "+tcp")
    assert "tc" not in tcp.flags and len(tcp.answers) == MANY
    fallback = dig(daemon.port, "shop-many.jiji", "A", "+noedns")  # dig retries over TCP on TC
    assert len(fallback.answers) == MANY


def test_truncation_respects_a_small_edns_payload(daemon: harness.DnsDaemon, corrosion: harness.CorrosionNode) -> None:
    msg = ask(daemon, "shop-many.jiji", use_edns=0, payload=512)
    assert msg.flags & dns.flags.TC and not msg.answer


def test_underscore_labels_get_an_answer(daemon: harness.DnsDaemon) -> None:
    r = dig(daemon.port, "_http._tcp.shop-api.jiji", "SRV")
    assert r.status == "NXDOMAIN"
    assert dig(daemon.port, "_acme.www.upstream.test", "TXT").status in {"NXDOMAIN", "NOERROR"}


def test_other_names_are_forwarded_over_udp_and_tcp(daemon: harness.DnsDaemon) -> None:
    assert [a[2] for a in dig(daemon.port, "www.upstream.test").answers] == ["198.51.100.7"]
    assert [a[2] for a in dig(daemon.port, "api.upstream.test", "A", "+tcp").answers] == ["198.51.100.8"]
    assert dig(daemon.port, "missing.upstream.test").status == "NXDOMAIN"
    stats = daemon.stats()
    assert stats["forwarded"] >= 3


def test_formerr_for_a_malformed_query(daemon: harness.DnsDaemon) -> None:
    header = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    reply = udp_raw(daemon, header + b"\x05short")  # question cut off mid-label
    assert reply[:2] == b"\x12\x34" and reply[2] & 0x80 and reply[3] & 0x0F == dns.rcode.FORMERR


def test_notimp_for_other_opcodes(daemon: harness.DnsDaemon) -> None:
    q = dns.message.make_query("shop-api.jiji", "A")
    q.set_opcode(dns.opcode.NOTIFY)
    reply = dns.message.from_wire(udp_raw(daemon, q.to_wire()))
    assert reply.rcode() == dns.rcode.NOTIMP and reply.opcode() == dns.opcode.NOTIFY


def test_compressed_question_takes_the_slow_path_and_is_answered(daemon: harness.DnsDaemon) -> None:
    # Two questions is a FORMERR; one question whose name is a pointer is unusual but legal.
    header = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0)
    q = header + b"\x08shop-api\x04jiji\x00" + struct.pack(">HH", 1, 1)
    reply = dns.message.from_wire(udp_raw(daemon, q))
    assert a_records(reply) == ["10.210.0.2", "10.210.1.2"]
    two = struct.pack(">HHHHHH", 8, 0x0100, 2, 0, 0, 0) + (b"\x01a\x04jiji\x00" + struct.pack(">HH", 1, 1)) * 2
    assert udp_raw(daemon, two)[3] & 0x0F == dns.rcode.FORMERR


def test_responses_are_never_answered(daemon: harness.DnsDaemon) -> None:
    q = dns.message.make_query("shop-api.jiji", "A")
    q.flags |= dns.flags.QR
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        s.sendto(q.to_wire(), (daemon.host, daemon.port))
        with pytest.raises(TimeoutError):
            s.recvfrom(4096)


def udp_raw(daemon: harness.DnsDaemon, packet: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(packet, (daemon.host, daemon.port))
        return s.recvfrom(65535)[0]


@pytest.fixture
def closed_daemon(pyz: Path, workdir: Path, corrosion: harness.CorrosionNode) -> Iterator[harness.DnsDaemon]:
    """Recursion allowed only from 10.0.0.0/8 (not us), upstream a port nobody answers."""
    d = harness.DnsDaemon(
        pyz,
        workdir,
        corrosion.api,
        upstreams=[f"127.0.0.1:{harness.free_port(socket.SOCK_DGRAM)}"],
        extra=["--recursion-from", "10.0.0.0/8"],
    )
    d.wait_ready()
    yield d
    d.close()


def test_not_an_open_resolver(closed_daemon: harness.DnsDaemon) -> None:
    r = dig(closed_daemon.port, "www.upstream.test")
    assert r.status == "REFUSED" and "ra" not in r.flags
    assert dig(closed_daemon.port, "shop-api.jiji").status == "NOERROR"


def test_servfail_when_every_upstream_fails(pyz: Path, workdir: Path, corrosion: harness.CorrosionNode) -> None:
    dead = f"127.0.0.1:{harness.free_port(socket.SOCK_DGRAM)}"
    d = harness.DnsDaemon(pyz, workdir, corrosion.api, upstreams=[dead, dead])
    try:
        r = dig(d.port, "www.upstream.test")
        assert r.status == "SERVFAIL"
        assert d.stats()["upstream_failures"] == 2
    finally:
        d.close()


def test_servfail_not_nxdomain_before_the_first_snapshot(pyz: Path, workdir: Path) -> None:
    nowhere = f"127.0.0.1:{harness.free_port()}"
    d = harness.DnsDaemon(pyz, workdir, nowhere)
    try:
        assert dig(d.port, "shop-api.jiji").status == "SERVFAIL"
        assert dig(d.port, "nope.jiji").status == "SERVFAIL"
        assert d.stats()["subscription_state"] in {"disconnected", "subscribing"}
    finally:
        d.close()


def test_ipv6_listener(pyz: Path, workdir: Path, corrosion: harness.CorrosionNode) -> None:
    port = harness.free_port(socket.SOCK_DGRAM)
    stats = workdir / f"v6-{port}.sock"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(pyz),
            "--listen",
            f"[::1]:{port}",
            "--corrosion-api",
            corrosion.api,
            "--stats-socket",
            str(stats),
            "--upstream",
            "127.0.0.1:9",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        harness.wait_until(lambda: dig(port, "shop-api.jiji", server="::1").status == "NOERROR", 10, "v6 answers")
        assert len(dig(port, "shop-api.jiji", "A", "+tcp", server="::1").answers) == 2
    finally:
        proc.terminate()
        proc.wait(10)


def test_port_in_use_is_named_clearly(pyz: Path, daemon: harness.DnsDaemon) -> None:
    out = subprocess.run(
        [sys.executable, str(pyz), "--listen", f"127.0.0.1:{daemon.port}", "--stats-socket", "none"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 1
    assert f"port {daemon.port} on 127.0.0.1 is already in use" in out.stderr


def test_bad_settings_are_named_before_anything_binds(pyz: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(pyz), "--listen", "10.210.0.1:53", "--ttl", "soon"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 2 and "--ttl" in out.stderr
    out = subprocess.run([sys.executable, str(pyz)], capture_output=True, text=True, timeout=20)
    assert out.returncode == 2 and "--listen" in out.stderr and "0.0.0.0" in out.stderr


def test_sigterm_shuts_down_cleanly(pyz: Path, workdir: Path, corrosion: harness.CorrosionNode) -> None:
    d = harness.DnsDaemon(pyz, workdir, corrosion.api)
    d.wait_ready()
    d.proc.terminate()
    assert d.proc.wait(10) == 0
    assert "event=stopping" in d.log()


def test_counters_are_readable(daemon: harness.DnsDaemon) -> None:
    dig(daemon.port, "nope.jiji")
    stats = daemon.stats()
    assert stats["ready"] is True and stats["subscription_state"] == "live"
    assert stats["answers"]["NXDOMAIN"] >= 1 and stats["queries_udp"] >= 1
    assert stats["cache_containers"] >= 3 + MANY and isinstance(stats["last_change_id"], int)
