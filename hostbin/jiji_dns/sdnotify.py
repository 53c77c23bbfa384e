"""systemd readiness notification; a no-op when not started by systemd (no NOTIFY_SOCKET)."""

from __future__ import annotations

import os
import socket


def notify(state: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.sendall(state.encode())
