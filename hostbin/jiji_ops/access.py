"""`jiji-net access`: access peers (laptops, CI runners) of the mesh (issue 21).

- `config NAME` (on the operator's machine, from the stack's outputs): the peer's wg-quick file,
  one [Peer] per server that has an endpoint, reaching that server's subnet through it; its
  private key is a placeholder, filled in on that machine, where `wg genkey` made it. No
  PersistentKeepalive: the machine then talks to a server only while it uses it, so it sits in no
  kernel it does not use (servers never open connections to it, so they need no open path back).
- `list`, `add`, `remove` (on a server, or with -H from the operator's machine): the registry's
  access peers. `add` is for short-lived peers (CI runners): it takes a lifetime and an address
  from the upper half of access_cidr (the stack's peers are given the lower half, so the two never
  meet); `remove` deletes one (the stack's own leave by the stack).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import ipaddress
import re
import time
from typing import Any

from jiji_common import accessrange
from jiji_common import allow as allow_entries

from .corrosion import Corrosion, Statement
from .sources import HostConfig

PRIVATE_KEY_PLACEHOLDER = "<this machine's private key: wg genkey | tee private.key | wg pubkey>"
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_DURATION = re.compile(r"([0-9]{1,6})([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_arguments(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="access_command", required=True)
    c = sub.add_parser(
        "config", parents=[common], help="the wg-quick file of an access peer (from the stack's outputs)"
    )
    c.add_argument("name")
    sub.add_parser("list", parents=[common], help="the registry's access peers")
    a = sub.add_parser("add", parents=[common], help="declare an access peer at run time, for a while (a CI runner)")
    a.add_argument("name")
    a.add_argument("--public-key", required=True, help="what `wg pubkey` printed on that machine")
    a.add_argument(
        "--expires-in", default="24h", help="lifetime: seconds, minutes, hours or days, e.g. 90m (default 24h)"
    )
    a.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="PROTO/PORT",
        help="a port of the servers' mesh addresses it may reach beyond DNS and ping, e.g. tcp/22 (repeatable)",
    )
    r = sub.add_parser("remove", parents=[common], help="remove an access peer added with `access add`")
    r.add_argument("name")


def stack_access(outputs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The servers and the access part of a stack's outputs (`pulumi stack output --json`)."""
    mesh = outputs.get("mesh") or outputs
    access = mesh.get("access")
    if not access:
        raise ValueError("the stack has no access peers (set jiji-net:access_peers, then pulumi up)")
    return mesh.get("servers") or {}, access


def wg_quick_config(outputs: dict[str, Any], name: str) -> str:
    servers, access = stack_access(outputs)
    peer = access["peers"].get(name)
    if peer is None:
        known = ", ".join(sorted(access["peers"])) or "none"
        raise ValueError(f"{name!r} is not an access peer of the stack (declared: {known})")
    ordered = sorted(servers.items(), key=lambda item: item[1]["index"])
    dns = next((s["dns_address"] for _, s in ordered if s.get("endpoint")), None)
    lines = [
        f"# jiji-net access peer {name}: `wg-quick up` this file on that machine, after putting its",
        "# private key below (the key never leaves the machine; the stack knows only its public key).",
        "[Interface]",
        f"PrivateKey = {PRIVATE_KEY_PLACEHOLDER}",
        f"Address = {peer['address']}/32",
    ]
    if dns:
        lines.append(f"DNS = {dns}")
    for server_name, s in ordered:
        lines.append("")
        if not s.get("endpoint"):
            lines.append(f"# {server_name}: no endpoint outside its private network, so not reachable from here")
            continue
        lines += [
            f"# {server_name}: its subnet (mesh address {s['mesh_address']}, its containers) through it",
            "[Peer]",
            f"PublicKey = {s['public_key']}",
            f"Endpoint = {s['endpoint']}",
            f"AllowedIPs = {s['subnet']}",
        ]
    return "\n".join(lines) + "\n"


def lifetime(text: str) -> int:
    m = _DURATION.fullmatch(text)
    if m is None or int(m.group(1)) == 0:
        raise ValueError(f"--expires-in {text!r}: write a number and s, m, h or d, e.g. 90m or 7d")
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def public_key(text: str) -> str:
    try:
        key = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != 32 or base64.b64encode(key).decode() != text:
        raise ValueError(
            f"--public-key {text!r} is not a WireGuard public key (44 characters of base64, what `wg pubkey` prints)"
        )
    return text


def runtime_address(access_cidr: str, name: str, taken: set[str]) -> str:
    """An address in the upper half of access_cidr (the stack's peers have the lower half): from
    the name's hash, moved up past addresses taken."""
    try:
        picked = accessrange.pick(
            name, accessrange.upper_half(access_cidr), {int(ipaddress.IPv4Address(a)) for a in taken}
        )
    except ValueError:
        raise ValueError(
            f"access_cidr {access_cidr} has no free address left in its upper half; remove peers or widen it"
        ) from None
    return str(ipaddress.IPv4Address(picked))


def rows(corrosion: Corrosion) -> list[dict[str, Any]]:
    columns, found = corrosion.query(
        "SELECT p.name AS name, p.public_key AS public_key, p.address AS address, p.expires_at AS expires_at,"
        " p.origin AS origin, coalesce(a.allow, '') AS allow FROM access_peers p"
        " LEFT JOIN access_allow a ON a.name = p.name ORDER BY p.name"
    )
    return [dict(zip(columns, r, strict=True)) for r in found]


def add(
    corrosion: Corrosion,
    host: HostConfig,
    name: str,
    key: str,
    seconds: int,
    now: float | None = None,
    allow: list[str] | None = None,
) -> dict[str, Any]:
    if host.access_cidr is None:
        raise ValueError("access peers are off in this stack (set jiji-net:access_peers, even [], then pulumi up)")
    if not _NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a lower-case DNS label (letters, digits and '-'); write e.g. ci-runner-42")
    public_key(key)
    opened = allow_entries.entries(allow or [])
    closed = corrosion_ports(host)
    for proto, port in opened:
        if port in closed:
            raise ValueError(f"--allow {proto}/{port}: Corrosion's port; an access peer could rewrite the registry")
    existing = rows(corrosion)
    for r in existing:
        if r["name"] == name:
            raise ValueError(
                f"{name!r} is already an access peer ({r['origin']}); remove it first, or pick another name"
            )
        if r["public_key"] == key:
            raise ValueError(f"that public key is already access peer {r['name']!r}: one key, one peer")
    address = runtime_address(host.access_cidr, name, {r["address"] for r in existing})
    expires_at = int((time.time() if now is None else now) + seconds)
    statements: list[Statement] = [(
        "INSERT INTO access_peers (name, public_key, address, expires_at, origin) VALUES (?, ?, ?, ?, 'cli')",
        [name, key, address, expires_at],
    )]  # fmt: skip
    if opened:
        statements.append(("INSERT INTO access_allow (name, allow) VALUES (?, ?)", [name, allow_entries.text(opened)]))
    corrosion.execute(statements)
    return {"name": name, "address": address, "expires_at": expires_at, "allow": allow_entries.text(opened)}


def corrosion_ports(host: HostConfig) -> set[int]:
    """Corrosion's ports on this server, which no access peer's allow may open."""
    return {host.gossip_port, int(host.corrosion_api.rpartition(":")[2])}


def remove(corrosion: Corrosion, name: str) -> None:
    found = [r for r in rows(corrosion) if r["name"] == name]
    if not found:
        raise ValueError(f"{name!r} is not an access peer")
    if found[0]["origin"] == "stack":
        raise ValueError(f"{name!r} is declared by the stack: remove it from jiji-net:access_peers and run pulumi up")
    corrosion.execute(
        [
            ("DELETE FROM access_peers WHERE name = ? AND origin = 'cli'", [name]),
            ("DELETE FROM access_allow WHERE name = ?", [name]),
        ]
    )
