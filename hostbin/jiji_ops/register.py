"""`jiji-net register`: makes the registry's servers and cluster_metadata rows match the stack.

Input (stdin, JSON, written by the Pulumi program): {"servers": [{id, hostname, subnet,
wireguard_ip, wireguard_pubkey, endpoints}], "metadata": {key: value}, "access_peers": [{name,
public_key, address, expires_at}] or null}. Rows of servers no longer in the stack are deleted,
with their containers' rows. The stack's access peers are written as given and the stack's others
deleted; peers added at run time (origin 'cli') are left alone, unless access_peers is null (the
feature is off): then every access peer goes. Running it twice changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

from jiji_common import allow as allow_entries

from .corrosion import Corrosion, CorrosionError, Statement

_SERVER_COLUMNS = ("id", "hostname", "subnet", "wireguard_ip", "wireguard_pubkey", "endpoints")


def statements(desired: dict[str, Any]) -> list[Statement]:
    servers = desired["servers"]
    if not servers:
        raise ValueError("register: the stack has no servers; refusing to empty the registry")
    out: list[Statement] = []
    columns = ", ".join(_SERVER_COLUMNS)
    marks = ", ".join("?" for _ in _SERVER_COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in _SERVER_COLUMNS[1:])
    # Only rows that differ are written, so a no-op run creates no new versions to gossip.
    differs = " OR ".join(f"servers.{c} IS NOT excluded.{c}" for c in _SERVER_COLUMNS[1:])
    for s in servers:
        row = [
            s["id"],
            s["hostname"],
            s["subnet"],
            s["wireguard_ip"],
            s["wireguard_pubkey"],
            json.dumps(s["endpoints"]),
        ]
        out.append(
            (
                f"INSERT INTO servers ({columns}) VALUES ({marks}) ON CONFLICT (id) DO UPDATE SET {updates} WHERE {differs}",
                row,
            )
        )
    ids = [s["id"] for s in servers]
    keep = ", ".join("?" for _ in ids)
    out.append((f"DELETE FROM containers WHERE server_id NOT IN ({keep})", ids))
    out.append((f"DELETE FROM servers WHERE id NOT IN ({keep})", ids))
    out.extend(_access_statements(desired.get("access_peers")))
    for key, value in sorted(desired["metadata"].items()):
        out.append(
            (
                "INSERT INTO cluster_metadata (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                " WHERE cluster_metadata.value IS NOT excluded.value",
                [key, str(value)],
            )
        )
    return out


_ACCESS_COLUMNS = ("name", "public_key", "address", "expires_at", "origin")


def _access_statements(peers: list[dict[str, Any]] | None) -> list[Statement]:
    if peers is None:
        return [("DELETE FROM access_peers", []), ("DELETE FROM access_allow", [])]
    out: list[Statement] = []
    columns = ", ".join(_ACCESS_COLUMNS)
    marks = ", ".join("?" for _ in _ACCESS_COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in _ACCESS_COLUMNS[1:])
    differs = " OR ".join(f"access_peers.{c} IS NOT excluded.{c}" for c in _ACCESS_COLUMNS[1:])
    for p in peers:
        row = [p["name"], p["public_key"], p["address"], int(p.get("expires_at") or 0), "stack"]
        out.append(
            (
                f"INSERT INTO access_peers ({columns}) VALUES ({marks}) ON CONFLICT (name) DO UPDATE SET {updates} WHERE {differs}",
                row,
            )
        )
    names = [p["name"] for p in peers]
    keep = ", ".join("?" for _ in names)
    out.append((f"DELETE FROM access_peers WHERE origin = 'stack' AND name NOT IN ({keep})", names))
    # Each stack peer's allow as declared (no row: nothing beyond DNS and ping); rows of peers
    # that are gone go with them, whoever added them.
    allowing = [(p["name"], allow_entries.text(p["allow"])) for p in peers if p.get("allow")]
    for name, allow in allowing:
        out.append((
            "INSERT INTO access_allow (name, allow) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET allow = excluded.allow"
            " WHERE access_allow.allow IS NOT excluded.allow",
            [name, allow],
        ))  # fmt: skip
    keep = ", ".join("?" for _ in allowing)
    out.append((
        "DELETE FROM access_allow WHERE name NOT IN (SELECT name FROM access_peers WHERE origin = 'cli')"
        f" AND name NOT IN ({keep})",
        [name for name, _ in allowing],
    ))  # fmt: skip
    return out


def run(corrosion: Corrosion, desired: dict[str, Any], wait: float = 60) -> str:
    try:
        corrosion.wait_ready(wait)
    except CorrosionError as e:
        raise CorrosionError(f"{e} (after {wait:.0f} s; check `systemctl status jiji-corrosion`)") from None
    results = corrosion.execute(statements(desired))
    changed = sum(int(r.get("rows_affected", 0)) for r in results)
    peers = desired.get("access_peers")
    access = "" if peers is None else f", {len(peers)} access peers"
    return f"registry: {len(desired['servers'])} servers, {len(desired['metadata'])} metadata keys{access}, {changed} rows written"
