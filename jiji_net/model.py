"""Validated settings of a mesh: plain frozen values, no Pulumi imports (see settings.py)."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, fields

WIREGUARD_INTERFACE = "jiji0"
CONTAINER_ENGINES = ("docker", "podman", "none")


def _typed(value: object, hint: object) -> bool:
    """Whether `value` is of the annotated type: plain classes, `X | None` and `tuple[int, ...]`
    (the only shapes the model uses); an int is never a bool."""
    if isinstance(hint, types.UnionType):
        return any(_typed(value, arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(_typed(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)  # type: ignore[arg-type]


class _Checked:
    """A model value holds only values of its declared types: validation.parse is the way in,
    and anything else that builds one with, say, `index="1"` fails here, not on a server."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if not _typed(value, hints[field.name]):
                raise TypeError(f"{type(self).__name__}.{field.name}: {value!r} is not {hints[field.name]}")


@dataclass(frozen=True, kw_only=True)
class Server(_Checked):
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
class CorrosionSource(_Checked):
    """Where servers get the corrosion binary: a pinned URL and checksum, or a local file."""

    url: str | None = None
    sha256: str | None = None
    local_path: str | None = None


@dataclass(frozen=True, kw_only=True)
class AccessPeer(_Checked):
    """A machine that joins the mesh just in time (a laptop, a CI runner): its WireGuard public
    key (its private key stays on it), its address in access_cidr (planned when not given, see
    plan.plan_access), when it stops being let in (unix seconds; None: never), and the ports of
    the servers' mesh addresses it may reach beyond DNS and ping ("tcp/22", "udp/5353")."""

    name: str
    public_key: str
    address: str | None = None
    expires_at: int | None = None
    allow: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class MeshSettings(_Checked):
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
    # Access peers (issue 21): off, nothing of them is on a server (no daemon, route or rule); on,
    # peers come and go (in the stack or at run time) without any server's steps changing. Their
    # addresses come from access_cidr, outside cluster_cidr, so one never collides with a server's
    # or a container's, and no rule written for the mesh ever matches a laptop.
    access_enabled: bool = False
    access_cidr: str = "10.211.0.0/16"
    access_peers: tuple[AccessPeer, ...] = ()
    # Seconds without a handshake before an access peer leaves a server's kernel (it comes back
    # just in time): 10 minutes, as Nebula and NetBird use.
    access_idle_timeout: int = 600
    # Prometheus endpoints on each server's mesh address (issue 22): the host tool's (`jiji-net
    # metrics`, jiji-metrics.service) and jiji-dns's own. The firewall lets only the servers of the
    # mesh (and the server itself) reach them; never containers, access peers or the underlay.
    metrics_enabled: bool = True
    metrics_port: int = 9480
    dns_metrics_port: int = 9481
