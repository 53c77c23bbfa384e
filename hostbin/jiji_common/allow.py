"""An access peer's `allow`: the ports of the servers' mesh addresses it may reach beyond DNS and
ping, written "tcp/22" or "udp/5353", in the stack as a list and in the registry's access_allow
table as one comma-separated text. The program checks a stack's entries with this parser (and
refuses Corrosion's ports); jiji-jit reads the registry's with it."""

from __future__ import annotations

import re

_ENTRY = re.compile(r"(tcp|udp)/([1-9][0-9]{0,4})")
MAX_ENTRIES = 16

Entry = tuple[str, int]


def parse_entry(text: str) -> Entry:
    match = _ENTRY.fullmatch(text)
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise ValueError(f"{text!r} is not 'tcp/PORT' or 'udp/PORT' with a port 1-65535")
    return match.group(1), int(match.group(2))


def entries(texts: list[str] | tuple[str, ...]) -> tuple[Entry, ...]:
    """Each of a list of entries parsed; a ValueError names the first bad one, too many, or a twice."""
    if len(texts) > MAX_ENTRIES:
        raise ValueError(f"{len(texts)} entries; at most {MAX_ENTRIES}")
    parsed = tuple(parse_entry(t) for t in texts)
    if len(set(parsed)) != len(parsed):
        raise ValueError(f"{list(texts)!r} names an entry twice")
    return parsed


def parse(text: str) -> tuple[Entry, ...]:
    """The registry's text ("" for nothing) as entries."""
    return entries(text.split(",")) if text else ()


def text(entries: tuple[Entry, ...] | list[str]) -> str:
    """Entries (parsed, or as the stack writes them) as the registry keeps them."""
    return ",".join(e if isinstance(e, str) else f"{e[0]}/{e[1]}" for e in entries)
