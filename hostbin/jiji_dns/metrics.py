"""Prometheus metrics: what a worker measures beside its counters, how the supervisor adds the
workers up, the text format, and the small HTTP endpoint that serves it.

The per-query cost is a type count (and two clock reads a batch of up to 64 queries), and only when
`--metrics-listen` is set (bench/dns.py prints the CPU per query with metrics on against off).
Everything else (rendering, the workers' sum) happens per scrape, in the process that serves the
endpoint: the supervisor when there are workers, so a scrape never runs in a worker's loop.
"""

from __future__ import annotations

import asyncio
import bisect
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from jiji_common.promtext import Exposition

from .events import log_limited

# Seconds. Local answers take tens of microseconds; forwards take milliseconds to the timeout.
REQUEST_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
FORWARD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
FORWARD_RESULTS = ("answer", "timeout", "error")
# Query types by name. Types above 255 are counted together as "other" (none in common use): the
# scrape stays within 257 series whatever a client sends.
TYPE_NAMES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
    35: "NAPTR", 41: "OPT", 43: "DS", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 255: "ANY",
}  # fmt: skip
OTHER_TYPE = 256  # the slot of types above 255 and of queries whose type cannot be read


class Histogram:
    """Cumulative-at-render histogram: counts per bucket (the last is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def observe_many(self, value: float, times: int) -> None:
        """`value` observed `times` times (a batch's mean, for each query of the batch)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.total += value * times

    def snapshot(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.total}


class WorkerMetrics:
    """What one worker measures for Prometheus beyond its Counters."""

    def __init__(self, upstreams: int) -> None:
        self.request = Histogram(REQUEST_BUCKETS)
        self.types = [0] * (OTHER_TYPE + 1)
        self.forward_results = [dict.fromkeys(FORWARD_RESULTS, 0) for _ in range(upstreams)]
        self.forward_seconds = [Histogram(FORWARD_BUCKETS) for _ in range(upstreams)]

    @staticmethod
    def type_of(query: bytes) -> int:
        """The query's type (OTHER_TYPE above 255 or unreadable), from the end of its first name
        (a question is never compressed)."""
        end = query.find(0, 12)
        if end < 0 or end + 2 >= len(query) or query[end + 1]:
            return OTHER_TYPE
        return query[end + 2]

    def count_type(self, query: bytes) -> None:
        self.types[self.type_of(query)] += 1

    def forward_done(self, upstream: int, result: str, seconds: float | None = None) -> None:
        self.forward_results[upstream][result] += 1
        if seconds is not None:
            self.forward_seconds[upstream].observe(seconds)

    def snapshot(self) -> dict[str, Any]:
        return {
            "request_seconds": self.request.snapshot(),
            "types": {
                ("other" if t == OTHER_TYPE else TYPE_NAMES.get(t, str(t))): n for t, n in enumerate(self.types) if n
            },
            "forward_results": [dict(r) for r in self.forward_results],
            "forward_seconds": [h.snapshot() for h in self.forward_seconds],
        }


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' `metrics` documents added up (same buckets and upstreams in every worker)."""
    out: dict[str, Any] = {}
    for part in parts:
        if not out:
            out = {
                "request_seconds": _hist_copy(part["request_seconds"]),
                "types": dict(part["types"]),
                "forward_results": [dict(r) for r in part["forward_results"]],
                "forward_seconds": [_hist_copy(h) for h in part["forward_seconds"]],
            }
            continue
        _hist_add(out["request_seconds"], part["request_seconds"])
        for name, n in part["types"].items():
            out["types"][name] = out["types"].get(name, 0) + n
        for mine, theirs in zip(out["forward_results"], part["forward_results"], strict=False):
            for result, n in theirs.items():
                mine[result] = mine.get(result, 0) + n
        for mine_h, theirs_h in zip(out["forward_seconds"], part["forward_seconds"], strict=False):
            _hist_add(mine_h, theirs_h)
    return out


def _hist_copy(h: dict[str, Any]) -> dict[str, Any]:
    return {"counts": list(h["counts"]), "sum": h["sum"]}


def _hist_add(into: dict[str, Any], h: dict[str, Any]) -> None:
    into["counts"] = [a + b for a, b in zip(into["counts"], h["counts"], strict=False)]
    into["sum"] += h["sum"]


def render(stats: dict[str, Any]) -> str:
    """The daemon's stats document (one worker's, or the supervisor's sum) as Prometheus text."""
    e = Exposition()
    e.one(
        "jiji_dns_ready",
        "gauge",
        "1 when every worker serves a table that follows Corrosion.",
        int(bool(stats.get("ready"))),
    )
    workers = stats.get("workers")
    e.one("jiji_dns_workers", "gauge", "Worker processes answering.", len(workers) if isinstance(workers, list) else 1)
    m = stats.get("metrics") or {}
    # The common types and rcodes are there from the start at 0: a series that appears only with
    # its first increment hides that increment from rate() and increase().
    types = {"A": 0, "AAAA": 0, **m.get("types", {})}
    e.family(
        "jiji_dns_queries_total", "counter", "Queries received (UDP and TCP), by query type.",
        [({"type": t}, n) for t, n in sorted(types.items())],
    )  # fmt: skip
    e.one("jiji_dns_tcp_queries_total", "counter", "Queries received over TCP.", stats.get("queries_tcp", 0))
    e.family(
        "jiji_dns_responses_total", "counter", "Responses sent, by rcode.",
        [({"rcode": r}, n) for r, n in sorted({"NOERROR": 0, "NXDOMAIN": 0, "SERVFAIL": 0, **(stats.get("answers") or {})}.items())],
    )  # fmt: skip
    if "request_seconds" in m:
        e.histogram(
            "jiji_dns_request_duration_seconds",
            "Time the receive loop took per UDP query answered here, each counted with the mean of the batch it was read in (forwards are in jiji_dns_forward_duration_seconds).",
            REQUEST_BUCKETS,
            [({}, m["request_seconds"])],
        )
    upstreams = stats.get("upstreams") or []
    results = m.get("forward_results", [])
    e.family(
        "jiji_dns_forwards_total", "counter", "Forward attempts to each upstream, by result (answer, timeout, error).",
        [({"upstream": u, "result": r}, n) for u, rs in zip(upstreams, results, strict=False) for r, n in sorted(rs.items())],
    )  # fmt: skip
    e.histogram(
        "jiji_dns_forward_duration_seconds",
        "Time from sending a query to an upstream to its answer.",
        FORWARD_BUCKETS,
        [({"upstream": u}, h) for u, h in zip(upstreams, m.get("forward_seconds", []), strict=False)],
    )
    e.one(
        "jiji_dns_upstream_failures_total",
        "counter",
        "Forward attempts that failed (timeout, refused, broken reply).",
        stats.get("upstream_failures", 0),
    )
    e.one(
        "jiji_dns_forwards_dropped_total",
        "counter",
        "Queries not forwarded because every in-flight slot was taken (answered SERVFAIL).",
        stats.get("forwards_dropped_busy", 0),
    )
    e.one(
        "jiji_dns_forward_replies_dropped_total",
        "counter",
        "Replies from an upstream's address that matched no query (spoofing or a confused upstream).",
        stats.get("forward_replies_dropped", 0),
    )
    e.one(
        "jiji_dns_packets_failed_total",
        "counter",
        "Queries whose handling raised (answered SERVFAIL).",
        stats.get("packets_failed", 0),
    )
    e.one(
        "jiji_dns_tcp_refused_total",
        "counter",
        "TCP connections refused at the connection limit.",
        stats.get("tcp_refused_busy", 0),
    )
    e.one(
        "jiji_dns_tcp_dropped_slow_total",
        "counter",
        "TCP connections dropped because the client did not read its answers.",
        stats.get("tcp_dropped_slow", 0),
    )
    e.one(
        "jiji_dns_table_rows",
        "gauge",
        "Healthy containers in the table (the smallest over workers).",
        stats.get("cache_containers", 0),
    )
    e.one(
        "jiji_dns_table_names",
        "gauge",
        "Service names in the table (the smallest over workers).",
        stats.get("cache_names", 0),
    )
    e.one(
        "jiji_dns_rows_refused_total",
        "counter",
        "Rows from Corrosion refused (over the row cap or unusable).",
        stats.get("rows_refused", 0),
    )
    e.one(
        "jiji_dns_subscription_up",
        "gauge",
        "1 when every worker's Corrosion subscription is live.",
        int(stats.get("subscription_state") == "live"),
    )
    e.one("jiji_dns_resyncs_total", "counter", "Subscriptions started over from a snapshot.", stats.get("resyncs", 0))
    e.one(
        "jiji_dns_reconnects_total",
        "counter",
        "Reconnects to the Corrosion API after a lost stream.",
        stats.get("reconnects", 0),
    )
    e.one(
        "jiji_dns_bad_events_total",
        "counter",
        "Events from Corrosion that broke the protocol.",
        stats.get("bad_events", 0),
    )
    e.one(
        "jiji_dns_reconciled_total",
        "counter",
        "Rows corrected by the periodic reconcile against a fresh query.",
        stats.get("reconciled", 0),
    )
    return e.text()


# ---- the endpoint ------------------------------------------------------------------------------

# A scrape request is one line and a few headers; anything longer is not Prometheus.
MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0
MAX_CONNECTIONS = 16


async def serve_metrics(
    sock: socket.socket, collect: Callable[[], Awaitable[dict[str, Any]] | dict[str, Any]]
) -> asyncio.base_events.Server:
    """GET /metrics over HTTP/1.x: the rendered stats. Each connection gets REQUEST_TIMEOUT s for
    its request head (at most MAX_REQUEST bytes) and its answer, one request per connection, at
    most MAX_CONNECTIONS at once; everything else gets an error or a closed socket."""
    open_connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_connections
        if open_connections >= MAX_CONNECTIONS:
            writer.close()
            return
        open_connections += 1
        try:
            await asyncio.wait_for(_answer(reader, writer, collect), REQUEST_TIMEOUT)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        except Exception as e:  # a scrape must never end the process serving it
            log_limited("metrics_error", error=f"{type(e).__name__}: {e}"[:300])
        finally:
            open_connections -= 1
            writer.close()

    return await asyncio.start_server(handle, sock=sock, limit=MAX_REQUEST)


async def _answer(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    collect: Callable[[], Awaitable[dict[str, Any]] | dict[str, Any]],
) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        writer.write(_response(431, "text/plain", b"request header too large\n"))
        await writer.drain()
        return
    request = head.split(b"\r\n", 1)[0].split()
    if len(request) != 3 or not request[2].startswith(b"HTTP/1."):
        writer.write(_response(400, "text/plain", b"bad request\n"))
    elif request[0] not in (b"GET", b"HEAD"):
        writer.write(_response(405, "text/plain", b"only GET\n"))
    elif request[1].split(b"?", 1)[0] != b"/metrics":
        writer.write(_response(404, "text/plain", b"metrics are at /metrics\n"))
    else:
        result = collect()
        stats = await result if isinstance(result, Awaitable) else result
        body = render(stats).encode()
        writer.write(
            _response(
                200, "text/plain; version=0.0.4; charset=utf-8", b"" if request[0] == b"HEAD" else body, len(body)
            )
        )
    await writer.drain()


REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
}


def _response(status: int, content_type: str, body: bytes, length: int | None = None) -> bytes:
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body
