"""Who each server talks to: the mesh table every server gets, and Corrosion's seeds (pure)."""

from __future__ import annotations

import netaddr

from .model import MeshSettings, Server
from .plan import ServerPlan, configured_endpoint

SEEDS = 2


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def mesh_rows(
    settings: MeshSettings, servers: list[Server], plans: dict[str, ServerPlan], public_keys: dict[str, str]
) -> list[dict[str, str]]:
    """One row per server in index order. A server picks, per peer, the private endpoint when both
    are on the same private network (the same network address and prefix), else the endpoint."""
    rows = []
    for s in sorted(servers, key=lambda s: s.index):
        private_network = private_endpoint = ""
        if s.private_address:
            private_network = private_network_of(s)
            private_endpoint = _join(
                str(netaddr.IPNetwork(_with_prefix(s.private_address)).ip), settings.wireguard_port
            )
        rows.append(
            {
                "name": s.name,
                "index": str(s.index),
                "subnet": plans[s.name].subnet,
                "public_key": public_keys[s.name],
                "endpoint": configured_endpoint(s, settings.wireguard_port) or "",
                "private_network": private_network,
                "private_endpoint": private_endpoint,
            }
        )
    return rows


def _with_prefix(address: str) -> str:
    # A private address without a prefix is taken as its /24, as jiji did.
    return address if "/" in address else f"{address}/24"


def private_network_of(server: Server) -> str:
    """The server's private network as a CIDR, "-" when it has none (the awk program's "none")."""
    if not server.private_address:
        return "-"
    return str(netaddr.IPNetwork(_with_prefix(server.private_address)).cidr)


def seeds_of(server: ServerPlan, servers: list[ServerPlan]) -> list[ServerPlan]:
    """The first few other servers by index: a server joining at a higher index changes nobody's
    seeds, so it rewrites no other server's Corrosion config."""
    return [p for p in sorted(servers, key=lambda p: p.index) if p.name != server.name][:SEEDS]
