"""jiji-dns's Prometheus endpoint: counts that follow the queries exactly, summed over workers,
text that promtool accepts, and an endpoint that a hostile or slow client cannot turn against
the DNS workers."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jiji_dns import config as config_mod
from jiji_dns.metrics import MAX_CONNECTIONS, REQUEST_TIMEOUT, Histogram, WorkerMetrics, merge, render

from tests import harness
from tests.conftest import dig


def scrape(port: int, request: bytes = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample line."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def metrics_of(port: int) -> dict[str, float]:
    raw = scrape(port)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return samples(body.decode())


@pytest.fixture
def measured(
    pyz: Path, workdir: Path, corrosion: harness.CorrosionNode, upstream: harness.Dnsmasq
) -> Iterator[tuple[harness.DnsDaemon, int]]:
    port = harness.free_port()
    d = harness.DnsDaemon(
        pyz,
        workdir,
        corrosion.api,
        upstreams=[upstream.address],
        extra=["--recursion-from", "127.0.0.0/8", "--metrics-listen", f"127.0.0.1:{port}"],
        workers=2,
    )
    d.wait_ready()
    yield d, port
    d.close()


def test_counts_follow_the_queries_summed_over_workers(
    measured: tuple[harness.DnsDaemon, int], corrosion: harness.CorrosionNode
) -> None:
    d, port = measured
    corrosion.add_container("m-1", "metered", "web", "s1", "10.210.7.2", 1)
    harness.wait_until(lambda: dig(d.port, "metered-web.jiji").answers, 10, "the row in DNS")
    before = metrics_of(port)
    # Fresh sockets per query spread the queries over both workers (SO_REUSEPORT hashes the port).
    for _ in range(23):
        assert dig(d.port, "metered-web.jiji").status == "NOERROR"
    for _ in range(4):
        assert dig(d.port, "nothing-here.jiji", "AAAA").status == "NXDOMAIN"
    for _ in range(3):
        assert dig(d.port, "www.upstream.test").answers
    # dig always adds an OPT record; a plain query (a stub resolver's) takes the server's short path.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:
        plain.settimeout(5)
        for n in range(5):
            plain.sendto(harness.dns_query("metered-web.jiji", n), ("127.0.0.1", d.port))
            assert plain.recv(4096)[:2] == n.to_bytes(2, "big")
    after = metrics_of(port)

    def delta(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert delta('jiji_dns_queries_total{type="A"}') == 23 + 3 + 5
    assert delta('jiji_dns_queries_total{type="AAAA"}') == 4
    assert delta('jiji_dns_responses_total{rcode="NXDOMAIN"}') == 4
    assert delta('jiji_dns_responses_total{rcode="NOERROR"}') == 23 + 3 + 5
    # Answered here: timed by the request histogram; forwarded: by the upstream's.
    assert delta("jiji_dns_request_duration_seconds_count") == 23 + 4 + 5
    upstream = next(k for k in after if k.startswith("jiji_dns_forwards_total") and 'result="answer"' in k)
    assert delta(upstream) == 3
    assert delta(upstream.replace("jiji_dns_forwards_total", "jiji_dns_forward_duration_seconds_count").replace(',result="answer"', "")) == 3
    assert after["jiji_dns_workers"] == 2
    assert after["jiji_dns_ready"] == 1 and after["jiji_dns_subscription_up"] == 1
    assert after["jiji_dns_table_rows"] >= 1
    # The workers really shared the load, so the sum above was a sum.
    shares = [w["queries_udp"] for w in d.stats()["workers"]]
    assert all(n > 0 for n in shares), shares


def test_promtool_accepts_the_text(measured: tuple[harness.DnsDaemon, int]) -> None:
    d, port = measured
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run `bash lab/toolchain.sh packages` (Debian's prometheus package)"
    dig(d.port, "www.upstream.test")
    body = scrape(port).partition(b"\r\n\r\n")[2]
    checked = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    # And the check can fail: a counter without _total is what it reports.
    broken = body.replace(b"jiji_dns_tcp_queries_total", b"jiji_dns_tcp_queries")
    assert subprocess.run([promtool, "check", "metrics"], input=broken, capture_output=True, timeout=30).returncode != 0


def test_a_huge_or_slow_request_does_not_stall_dns(measured: tuple[harness.DnsDaemon, int]) -> None:
    d, port = measured
    # 1 MB of header: refused with 431 after the first 8 KiB; DNS answers meanwhile.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        try:
            s.sendall(b"X-Filler: " + b"a" * (1 << 20))
        except OSError:
            pass  # the endpoint may close before taking it all
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 431") or reply == b"", reply[:100]
    # Slow clients: each holds a connection open, sending one byte now and then; a scrape and
    # DNS still answer at once, and a client over the connection cap is closed, not queued.
    slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(MAX_CONNECTIONS - 1)]
    try:
        for s in slow:
            s.sendall(b"G")
        time.sleep(0.2)
        started = time.monotonic()
        assert dig(d.port, "www.upstream.test").answers
        assert metrics_of(port)["jiji_dns_ready"] == 1
        assert time.monotonic() - started < 2.0
        extra = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        try:
            extra[1].settimeout(2)
            assert extra[1].recv(10) == b"", "a connection over the cap was kept"
        finally:
            for s in extra:
                s.close()
        # The slow ones are dropped after REQUEST_TIMEOUT.
        slow[0].settimeout(REQUEST_TIMEOUT + 3)
        assert slow[0].recv(10) == b""
    finally:
        for s in slow:
            s.close()


def test_only_get_metrics_is_served(measured: tuple[harness.DnsDaemon, int]) -> None:
    _, port = measured
    assert scrape(port, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert scrape(port, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert scrape(port, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400")


def test_types_are_bounded_and_histograms_add_up() -> None:
    m = WorkerMetrics(1)
    for qtype in range(1000):
        m.count_type(harness.dns_query("x.jiji", 1)[:-4] + qtype.to_bytes(2, "big") + b"\x00\x01")
    m.count_type(b"\x00" * 5)  # too short: counted as other, no error
    types = m.snapshot()["types"]
    assert len(types) == 257, len(types)
    assert types["other"] == 1000 - 256 + 1 and types["A"] == 1 and types["ANY"] == 1 and types["3"] == 1
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    assert h.counts == [2, 1, 1]
    total = merge([{**m.snapshot()}, {**m.snapshot()}])
    assert sum(total["types"].values()) == 2 * 1001
    text = render({"ready": True, "metrics": total, "upstreams": ["127.0.0.1:9"]})
    assert re.search(r'^jiji_dns_queries_total\{type="A"\} 2$', text, re.M), text[:500]
    assert 'jiji_dns_forwards_total{upstream="127.0.0.1:9",result="answer"} 0' in text


def test_metrics_port_must_differ_from_dns() -> None:
    with pytest.raises(config_mod.ConfigError, match="port of its own"):
        config_mod.load(["--listen", "127.0.0.1:5353", "--upstream", "127.0.0.1:9", "--metrics-listen", "127.0.0.1:5353"])
