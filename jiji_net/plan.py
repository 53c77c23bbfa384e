"""Address plan of a mesh: pure functions over validated model values (validation.py checks them).

Server N (its `index`) gets the N-th subnet of the cluster CIDR; its mesh address is the
subnet's first host (.1), containers use the second host to the last usable one. A server's
index never changes when others come and go, so nothing is ever renumbered.
"""

from __future__ import annotations

from dataclasses import dataclass

import netaddr
from jiji_common import accessrange

from .model import AccessPeer, MeshSettings, Server


@dataclass(frozen=True)
class ServerPlan:
    name: str
    index: int
    subnet: str
    mesh_address: str
    container_first: str
    container_last: str

    @property
    def container_range(self) -> str:
        return f"{self.container_first}-{self.container_last}"


def subnet_count(settings: MeshSettings) -> int:
    cluster = netaddr.IPNetwork(settings.cluster_cidr)
    return int(2 ** (settings.subnet_prefix_len - cluster.prefixlen))


def subnet_of(settings: MeshSettings, index: int) -> netaddr.IPNetwork:
    """The index-th subnet, computed directly (no walk over the earlier ones)."""
    cluster = netaddr.IPNetwork(settings.cluster_cidr)
    size = 2 ** (32 - settings.subnet_prefix_len)
    return netaddr.IPNetwork(f"{netaddr.IPAddress(cluster.first + index * size)}/{settings.subnet_prefix_len}")


def plan_addresses(settings: MeshSettings, servers: list[Server]) -> dict[str, ServerPlan]:
    plans = {}
    for s in servers:
        subnet = subnet_of(settings, s.index)
        plans[s.name] = ServerPlan(
            name=s.name,
            index=s.index,
            subnet=str(subnet),
            mesh_address=str(netaddr.IPAddress(subnet.first + 1)),
            container_first=str(netaddr.IPAddress(subnet.first + 2)),
            container_last=str(netaddr.IPAddress(subnet.last - 1)),
        )
    return plans


def plan_access(settings: MeshSettings, peers: tuple[AccessPeer, ...]) -> dict[str, str]:
    """Each access peer's address in access_cidr: the one it declares, or one picked from its name
    (SHA-256 of the name, modulo the hosts of the range's lower half), moved up to the next free
    address on a clash, with the peers taken in name order. A peer keeps its address while the
    peers that come and go are not the one it clashed with, and it never depends on list order; a
    peer that must never move declares its address. The upper half is for peers added at run time
    (`jiji-net access add`), so the two never pick the same address. validation checks that the
    lower half has room for them all."""
    half = stack_half(settings.access_cidr)
    taken = {int(netaddr.IPAddress(p.address)) for p in peers if p.address}
    out = {p.name: p.address for p in peers if p.address}
    for peer in sorted((p for p in peers if not p.address), key=lambda p: p.name):
        address = accessrange.pick(peer.name, half, taken)  # validation checked the half has room
        taken.add(address)
        out[peer.name] = str(netaddr.IPAddress(address))
    return out


def stack_half(access_cidr: str) -> tuple[int, int]:
    """The first address and the size of the lower half of access_cidr, less its network address:
    where the stack's access peers live."""
    return accessrange.lower_half(access_cidr)


def configured_endpoint(server: Server, port: int) -> str | None:
    """The server's configured endpoint (public or CGNAT) as host:port, the WireGuard port unless
    the endpoint names one: how a server outside its private network reaches it."""
    if not server.endpoint:
        return None
    host, _, explicit_port = split_endpoint(server.endpoint)
    return _join(host, int(explicit_port) if explicit_port else port)


def split_endpoint(value: str) -> tuple[str, str, str]:
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, ":", rest.lstrip(":")
    if value.count(":") == 1:
        return value.partition(":")
    return value, "", ""


def endpoint_host(value: str) -> str:
    return split_endpoint(value.split("/")[0])[0]


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
