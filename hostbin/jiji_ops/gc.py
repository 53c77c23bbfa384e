"""`jiji-net gc`: registry rows of containers that no longer exist (pure planning part)."""

from __future__ import annotations

from typing import Any


def stale_rows(rows: list[dict[str, Any]], servers: set[str], this_server: str, local_ids: set[str] | None) -> list[dict[str, Any]]:
    """Rows whose server left the registry, and rows of this server's containers that its engine
    no longer has. Other servers' containers are judged on their own server (run gc on all)."""
    out = []
    for r in rows:
        if r["server_id"] not in servers:
            out.append({**r, "reason": f"server {r['server_id']!r} is not in the registry"})
        elif r["server_id"] == this_server and local_ids is not None and r["id"] not in local_ids:
            out.append({**r, "reason": "no such container on this server"})
    return out
