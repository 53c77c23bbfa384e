"""Aligned text tables for people; colour only when writing to a terminal."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

_COLOURS = {"red": "31", "green": "32", "yellow": "33", "bold": "1"}


def use_colour(stream: object = sys.stdout) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)()) and "NO_COLOR" not in os.environ


def paint(text: str, colour: str, enabled: bool) -> str:
    return f"\033[{_COLOURS[colour]}m{text}\033[0m" if enabled and text else text


def render(headers: Sequence[str], rows: Sequence[Sequence[object]], colours: Sequence[str | None] | None = None, colour: bool = False) -> str:
    """Columns padded to their widest cell (measured before colour codes are added)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for n, row in enumerate(cells):
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        tint = colours[n] if colours else None
        lines.append(paint(line, tint, colour) if tint else line)
    return "\n".join(lines)


def age(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)
