"""`corrosion cluster members` prints one pretty JSON object per member, back to back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Member:
    actor_id: str
    addr: str
    rtt_ms: float | None  # the mean of the round trips corrosion keeps


def parse_members(text: str) -> list[Member]:
    decoder = json.JSONDecoder()
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        obj, end = decoder.raw_decode(text, pos)
        out.append(_member(obj))
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return sorted(out, key=lambda m: m.addr)


def _member(obj: dict[str, Any]) -> Member:
    rtts = [float(r) for r in obj.get("rtts") or []]
    return Member(
        actor_id=str(obj.get("id", "")),
        addr=str((obj.get("state") or {}).get("addr", "")),
        rtt_ms=sum(rtts) / len(rtts) if rtts else None,
    )
