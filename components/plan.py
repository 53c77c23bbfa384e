"""Address plan, validation and peer selection for a mesh: pure functions over model values.

Server N (its `index`) gets the N-th subnet of the cluster CIDR; its mesh address is the
subnet's first host (.1), containers use the second host to the last usable one. A server's
index never changes when others come and go, so nothing is ever renumbered.
"""

from __future__ import annotations

from dataclasses import dataclass

import netaddr

from .model import CONTAINER_ENGINES, MeshSettings, Server


class ConfigError(ValueError):
    """Bad stack configuration; every line names the setting, the bad value and the fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid jiji-net configuration:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


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


@dataclass(frozen=True)
class Peer:
    """One [Peer] of a server's WireGuard config: who, which subnet, where to reach it."""

    name: str
    subnet: str
    endpoint: str | None


def subnet_count(settings: MeshSettings) -> int:
    cluster = netaddr.IPNetwork(settings.cluster_cidr)
    return int(2 ** (settings.subnet_prefix_len - cluster.prefixlen))


def subnet_of(settings: MeshSettings, index: int) -> netaddr.IPNetwork:
    """The index-th subnet, computed directly (no walk over the earlier ones)."""
    cluster = netaddr.IPNetwork(settings.cluster_cidr)
    size = 2 ** (32 - settings.subnet_prefix_len)
    return netaddr.IPNetwork(f"{netaddr.IPAddress(cluster.first + index * size)}/{settings.subnet_prefix_len}")


def validate(settings: MeshSettings, servers: list[Server]) -> None:
    """Raise ConfigError listing every problem, before anything touches a server."""
    problems: list[str] = []
    cluster = _network(settings.cluster_cidr, "cluster_cidr", problems)
    if cluster is not None:
        if cluster.version != 4:
            problems.append(f"cluster_cidr: {settings.cluster_cidr} is IPv6; use an IPv4 range such as 10.210.0.0/16")
        elif cluster.ip != cluster.network:
            problems.append(f"cluster_cidr: {settings.cluster_cidr} has host bits set; use {cluster.cidr}")
        elif not settings.subnet_prefix_len > cluster.prefixlen:
            problems.append(
                f"subnet_prefix_len: {settings.subnet_prefix_len} must be longer than the cluster prefix"
                f" /{cluster.prefixlen}; use e.g. {min(cluster.prefixlen + 8, 30)}"
            )
        elif settings.subnet_prefix_len > 30:
            problems.append(
                f"subnet_prefix_len: /{settings.subnet_prefix_len} leaves no room for containers"
                " (a subnet needs the mesh address and at least one container); use 30 or less"
            )
        else:
            count = subnet_count(settings)
            if len(servers) > count:
                problems.append(
                    f"servers: {len(servers)} servers but {settings.cluster_cidr} holds only {count}"
                    f" /{settings.subnet_prefix_len} subnets; widen cluster_cidr or lengthen subnet_prefix_len"
                )
            for s in servers:
                if not 0 <= s.index < count:
                    problems.append(
                        f"servers[{s.name}].index: {s.index} is out of range 0-{count - 1}"
                        f" for {settings.cluster_cidr} in /{settings.subnet_prefix_len} subnets"
                    )
    _unique(servers, "name", problems)
    _unique(servers, "index", problems)
    _unique(servers, "host", problems)
    _unique([s for s in servers if s.endpoint], "endpoint", problems)
    for s in servers:
        if not s.name or not all(c.isalnum() or c == "-" for c in s.name):
            problems.append(f"servers: name {s.name!r} must be letters, digits and '-'; it names resources and rows")
        if not 0 < s.port < 65536:
            problems.append(f"servers[{s.name}].port: {s.port} is not a TCP port; use 1-65535 (usually 22)")
        if s.endpoint is None and s.private_address is None:
            problems.append(
                f"servers[{s.name}]: neither endpoint nor private_address is set; peers need one to reach it"
            )
        for field in ("endpoint", "private_address"):
            value = getattr(s, field)
            if (
                value is not None
                and _address(value, f"servers[{s.name}].{field}", problems) is not None
                and cluster is not None
            ):
                if netaddr.IPAddress(_host_part(value)) in cluster:
                    problems.append(
                        f"servers[{s.name}].{field}: {value} is inside cluster_cidr {settings.cluster_cidr};"
                        " the underlay and the overlay must not overlap"
                    )
    if settings.container_engine not in CONTAINER_ENGINES:
        problems.append(f"container_engine: {settings.container_engine!r} is not one of {', '.join(CONTAINER_ENGINES)}")
    if not 1280 <= settings.mtu <= 1500:
        problems.append(f"mtu: {settings.mtu} is outside 1280-1500; WireGuard in a 1500-byte network wants 1420")
    ports = {
        "wireguard_port": settings.wireguard_port,
        "gossip_port": settings.gossip_port,
        "api_port": settings.api_port,
        "dns_port": settings.dns_port,
    }
    for key, port in ports.items():
        if not 0 < port < 65536:
            problems.append(f"{key}: {port} is not a port; use 1-65535")
    src = settings.corrosion
    if bool(src.local_path) == bool(src.url):
        problems.append("corrosion: set exactly one of corrosion.url (with corrosion.sha256) or corrosion.local_path")
    elif src.url and not (src.sha256 and len(src.sha256) == 64 and all(c in "0123456789abcdef" for c in src.sha256)):
        problems.append("corrosion.sha256: a pinned download needs its SHA-256 (64 lower-case hex digits)")
    if problems:
        raise ConfigError(problems)


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


def endpoint_for(local: Server, peer: Server, port: int) -> str | None:
    """How `local` reaches `peer`: its private address when both share that private network,
    else its configured endpoint (public or CGNAT), with the WireGuard port unless it names one."""
    if local.private_address and peer.private_address:
        local_net = netaddr.IPNetwork(_with_prefix(local.private_address))
        if netaddr.IPAddress(_host_part(peer.private_address)) in local_net.cidr:
            return _join(_host_part(peer.private_address), port)
    return configured_endpoint(peer, port)


def configured_endpoint(server: Server, port: int) -> str | None:
    """The server's configured endpoint (public or CGNAT) as host:port, the WireGuard port unless
    the endpoint names one: how a server outside its private network reaches it."""
    if not server.endpoint:
        return None
    host, _, explicit_port = _split_endpoint(server.endpoint)
    return _join(host, int(explicit_port) if explicit_port else port)


def peers_of(server: Server, servers: list[Server], plans: dict[str, ServerPlan], port: int) -> list[Peer]:
    """Every other server as a peer, in index order (stable diffs)."""
    return [
        Peer(name=other.name, subnet=plans[other.name].subnet, endpoint=endpoint_for(server, other, port))
        for other in sorted(servers, key=lambda s: s.index)
        if other.name != server.name
    ]


def _network(value: str, key: str, problems: list[str]) -> netaddr.IPNetwork | None:
    try:
        return netaddr.IPNetwork(value)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        problems.append(f"{key}: {value!r} is not a CIDR; write e.g. 10.210.0.0/16")
        return None


def _address(value: str, key: str, problems: list[str]) -> netaddr.IPAddress | None:
    try:
        return netaddr.IPAddress(_host_part(value))
    except (netaddr.AddrFormatError, ValueError, TypeError):
        problems.append(f"{key}: {value!r} is not an IP address; write e.g. 203.0.113.10 (optionally :port or /prefix)")
        return None


def _unique(servers: list[Server], field: str, problems: list[str]) -> None:
    seen: dict[object, str] = {}
    for s in servers:
        value = getattr(s, field)
        if field in ("endpoint", "host") and isinstance(value, str):
            value = _host_part(value)
        if value in seen:
            problems.append(
                f"servers: {field} {value!r} is used by both {seen[value]!r} and {s.name!r}; each server needs its own"
            )
        else:
            seen[value] = s.name


def _split_endpoint(value: str) -> tuple[str, str, str]:
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, ":", rest.lstrip(":")
    if value.count(":") == 1:
        return value.partition(":")
    return value, "", ""


def _host_part(value: str) -> str:
    return _split_endpoint(value.split("/")[0])[0]


def _with_prefix(value: str) -> str:
    # A private address without a prefix is taken as its /24, as jiji did.
    return value if "/" in value else f"{value}/24"


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
