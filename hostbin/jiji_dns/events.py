"""One key=value log line per event on stdout, and the counters an operator reads."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from jiji_common.logline import log, warn

__all__ = ["log", "warn", "log_limited", "Counters", "RCODE_NAMES"]


LIMITED_INTERVAL = 10.0  # seconds between two lines of the same rate-limited event
_limited: dict[str, tuple[float, int]] = {}


def log_limited(event: str, **fields: Any) -> None:
    """`log`, at most once per LIMITED_INTERVAL per event name; the next line carries how many
    were suppressed meanwhile. For anything a hostile sender can trigger once per packet."""
    now = time.monotonic()
    last, suppressed = _limited.get(event, (-LIMITED_INTERVAL, 0))
    if now - last < LIMITED_INTERVAL:
        _limited[event] = (last, suppressed + 1)
        return
    _limited[event] = (now, 0)
    if suppressed:
        fields["suppressed"] = suppressed
    log(event, **fields)


@dataclass
class Counters:
    queries_udp: int = 0
    queries_tcp: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    forwarded: int = 0
    upstream_failures: int = 0
    forwards_dropped_busy: int = 0
    # Replies from the upstream's address and port that were not for the query (wrong id or
    # question): a spoofing attempt or a confused upstream.
    forward_replies_dropped: int = 0
    packets_failed: int = 0
    tcp_refused_busy: int = 0
    tcp_dropped_slow: int = 0
    bad_events: int = 0
    rows_refused: int = 0
    subscription_state: str = "connecting"
    subscription_id: str = ""
    last_change_id: int | None = None
    resyncs: int = 0
    # New subscriptions that ended before their snapshot: their matcher is never asked again.
    subscriptions_abandoned: int = 0
    reconnects: int = 0
    hints_applied: int = 0
    reconciled: int = 0

    def snapshot(self, cache_containers: int, cache_names: int, ready: bool) -> dict[str, Any]:
        out = asdict(self)
        out.update(cache_containers=cache_containers, cache_names=cache_names, ready=ready)
        return out


RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
