"""One key=value log line per event on stdout (journald adds the timestamp)."""

from __future__ import annotations

import os
import sys
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


def warn(event: str, **fields: Any) -> None:
    """`log` at warning priority: journald reads a leading `<4>` as the line's level (systemd's
    SyslogLevelPrefix=, on by default), so `journalctl -p warning` shows it."""
    if os.environ.get("JOURNAL_STREAM"):
        sys.stdout.write("<4>")
    log(event, **fields)
