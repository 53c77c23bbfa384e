"""Validated settings of a mesh: plain frozen values, no Pulumi imports (see settings.py)."""

from __future__ import annotations

from dataclasses import dataclass

WIREGUARD_INTERFACE = "jiji0"
CONTAINER_ENGINES = ("docker", "podman", "none")


@dataclass(frozen=True, kw_only=True)
class Server:
    """One server of the stack. `index` is its stable slot: it picks the server's subnet.

    `gone` marks a server that is unreachable for good: its resources leave the state without
    anyone contacting it, and its index stays taken while it is listed.
    """

    name: str
    host: str
    index: int
    port: int = 22
    user: str = "root"
    endpoint: str | None = None
    private_address: str | None = None
    host_key: str | None = None
    gone: bool = False


@dataclass(frozen=True, kw_only=True)
class CorrosionSource:
    """Where servers get the corrosion binary: a pinned URL and checksum, or a local file."""

    url: str | None = None
    sha256: str | None = None
    local_path: str | None = None


@dataclass(frozen=True, kw_only=True)
class MeshSettings:
    cluster_cidr: str = "10.210.0.0/16"
    subnet_prefix_len: int = 24
    wireguard_port: int = 51820
    mtu: int = 1420
    keepalive: int = 25
    gossip_port: int = 9280
    api_port: int = 9220
    dns_port: int = 53
    domain: str = "jiji"
    dns_ttl: int = 60
    container_engine: str = "docker"
    corrosion: CorrosionSource = CorrosionSource()
    # Without a pinned host key, pulumi-command trusts whoever answers SSH: for throwaway labs only.
    allow_unpinned_host_keys: bool = False
    # Ports of the host's mesh address that containers on its bridge may reach (beyond DNS).
    container_host_ports: tuple[int, ...] = ()
