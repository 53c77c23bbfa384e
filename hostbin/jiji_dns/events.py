"""One key=value log line per event on stdout, and the counters an operator reads."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any


def _value(v: Any) -> str:
    text = str(v)
    if text == "" or any(ch in text for ch in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def log(event: str, **fields: Any) -> None:
    """`event=NAME k=v ...` on stdout (journald adds the timestamp)."""
    parts = [f"event={event}"] + [f"{k}={_value(v)}" for k, v in fields.items()]
    sys.stdout.write(" ".join(parts) + "\n")
    sys.stdout.flush()


@dataclass
class Counters:
    queries_udp: int = 0
    queries_tcp: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    forwarded: int = 0
    upstream_failures: int = 0
    forwards_dropped_busy: int = 0
    subscription_state: str = "connecting"
    subscription_id: str = ""
    last_change_id: int | None = None
    resyncs: int = 0
    reconnects: int = 0
    hints_applied: int = 0
    reconciled: int = 0

    def snapshot(self, cache_containers: int, cache_names: int, ready: bool) -> dict[str, Any]:
        out = asdict(self)
        out.update(cache_containers=cache_containers, cache_names=cache_names, ready=ready)
        return out


RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
