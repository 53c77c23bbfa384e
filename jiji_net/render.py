"""Renders the files a server gets, from plain values (no Pulumi imports; golden-tested)."""

from __future__ import annotations

import functools
import hashlib
import json
import shlex
from pathlib import Path

import jinja2
from jiji_common import layout

from .model import MeshSettings
from .plan import ServerPlan

# Gossip datagrams must fit inside the WireGuard MTU with room for IP/UDP headers.
GOSSIP_MAX_MTU = 1232
# Changes made on the far side of a partition arrive only by Corrosion's periodic sync, whose
# interval backs off from 1 s to 15 s and never resets: capped at 2 s, a healed partition
# converges in seconds. Each sync is a small state exchange with 3 to 10 peers.
SYNC_MAX_BACKOFF = 2

_HOSTBIN = Path(__file__).resolve().parent.parent / "hostbin"
# Our templates, then hostbin's (the jiji-dns unit lives beside the daemon): one environment, so
# each template is read and compiled once per run, not once per server; no reload check either
# (a stat per template use: thousands at 256 servers), since a run never sees them change.
_ENV = jinja2.Environment(
    auto_reload=False,
    loader=jinja2.ChoiceLoader(
        [jinja2.FileSystemLoader(Path(__file__).parent / "templates"), jinja2.FileSystemLoader(_HOSTBIN)]
    ),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)
# Every value that enters a shell script goes through `| sh`.
_ENV.filters["sh"] = lambda value: shlex.quote(str(value))
# Paths on the server, as `layout.NAME`, in every template.
_ENV.globals["layout"] = layout


def wireguard_interface(settings: MeshSettings, plan: ServerPlan) -> str:
    """The [Interface] part of jiji0.conf; the server appends the [Peer] sections from the mesh
    table. No secret in it, so it may sit in Pulumi inputs and diffs."""
    return _ENV.get_template("wireguard.conf.j2").render(
        address=f"{plan.mesh_address}/32",
        listen_port=settings.wireguard_port,
        mtu=settings.mtu,
        key_path=layout.WIREGUARD_KEY,
        access_cidr=settings.access_cidr if settings.access_enabled else "",
    )


MESH_TABLE_COLUMNS = ("name", "index", "subnet", "public_key", "endpoint", "private_network", "private_endpoint")


def mesh_table(rows: list[dict[str, str]]) -> str:
    """Every server of the mesh, one a line (tab-separated, "-" for none): what each server needs
    to know of its peers. The same bytes go to every server, so state keeps only their hash."""
    lines = ["# " + "\t".join(MESH_TABLE_COLUMNS)]
    for row in rows:
        values = [str(row[c]) if row[c] not in (None, "") else "-" for c in MESH_TABLE_COLUMNS]
        if any(not v or any(ch.isspace() for ch in v) for v in values):
            raise ValueError(f"mesh table: a value of {row['name']!r} is empty or has whitespace: {values}")
        lines.append("\t".join(values))
    return "\n".join(lines) + "\n"


def corrosion_config(settings: MeshSettings, plan: ServerPlan, seeds: list[ServerPlan]) -> str:
    """`seeds` are the nodes a starting node first contacts (a few, not all: membership spreads
    by gossip, and a new server then changes no other server's config)."""
    return _ENV.get_template("corrosion.toml.j2").render(
        db_path=layout.CORROSION_DB,
        schema_dir=layout.CORROSION_SCHEMAS,
        gossip_addr=f"{plan.mesh_address}:{settings.gossip_port}",
        bootstrap=[f"{o.mesh_address}:{settings.gossip_port}" for o in sorted(seeds, key=lambda o: o.index)],
        max_mtu=GOSSIP_MAX_MTU,
        max_sync_backoff=SYNC_MAX_BACKOFF,
        api_addr=f"127.0.0.1:{settings.api_port}",
        admin_path=layout.CORROSION_ADMIN_SOCKET,
    )


BRIDGE = "jiji-br0"
# The engines' own bridges (podman's, CNI's, docker's default and user networks). Their containers
# get the host-wide DNS setting too (docker's daemon.json `dns`, podman's `dns_servers`; neither
# engine here can set DNS per network), so jiji-dns answers them on the mesh address, and
# recursion is allowed from the private ranges those engines draw their subnets from.
ENGINE_BRIDGES = ("podman+", "cni-podman+", "docker+", "br-+")
ENGINE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")


def corrosion_unit() -> str:
    return _ENV.get_template("jiji-corrosion.service.j2").render(binary=layout.CORROSION_BINARY, config=layout.CORROSION_CONFIG)


def network_script(settings: MeshSettings, plan: ServerPlan, bridge: str) -> str:
    return _ENV.get_template("jiji-net-network.sh.j2").render(
        subnet=plan.subnet,
        cluster_cidr=settings.cluster_cidr,
        access_cidr=settings.access_cidr if settings.access_enabled else "",
        mesh_address=plan.mesh_address,
        prefix_len=settings.subnet_prefix_len,
        mtu=settings.mtu,
        bridge=bridge,
        create_bridge=settings.container_engine == "none",
        wireguard_port=settings.wireguard_port,
        dns_port=settings.dns_port,
        gossip_port=settings.gossip_port,
        api_port=settings.api_port,
        host_part_match=mesh_address_match(settings),
        container_host_ports=list(settings.container_host_ports),
        metrics_ports=[settings.metrics_port, settings.dns_metrics_port] if settings.metrics_enabled else [],
        engine_bridges=list(ENGINE_BRIDGES) if settings.container_engine != "none" else [],
    )


def podman_network(settings: MeshSettings, plan: ServerPlan, bridge: str) -> str:
    """The `jiji` network as podman's netavark backend keeps it (its file), for the one case where
    `podman network create` refuses it (see the network step). The id is derived from the subnet,
    so a server always writes the same bytes."""
    network = {
        "name": "jiji",
        "id": hashlib.sha256(f"jiji-net podman network jiji {plan.subnet}".encode()).hexdigest(),
        "driver": "bridge",
        "network_interface": bridge,
        "created": "2026-01-01T00:00:00Z",
        "subnets": [{"subnet": plan.subnet, "gateway": plan.mesh_address}],
        "ipv6_enabled": False,
        "internal": False,
        "dns_enabled": False,
        "options": {"mtu": str(settings.mtu)},
        "ipam_options": {"driver": "host-local"},
    }
    return json.dumps(network, indent=5) + "\n"


def mesh_address_match(settings: MeshSettings) -> str:
    """An iptables source match for "the first host of any subnet": value/mask on the host part."""
    host_mask = (1 << (32 - settings.subnet_prefix_len)) - 1
    return f"{_dotted(1)}/{_dotted(host_mask)}"


def _dotted(value: int) -> str:
    return ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))


def network_unit() -> str:
    return _ENV.get_template("jiji-net-network.service.j2").render(script=layout.NETWORK_SCRIPT)


def dns_unit(settings: MeshSettings, plan: ServerPlan) -> str:
    """jiji-dns answers on the mesh address, which is also the gateway of the container bridge."""
    return _ENV.get_template("jiji-dns.service.j2").render(
        install_path=layout.DNS_PYZ,
        listen=[f"{plan.mesh_address}:{settings.dns_port}"],
        corrosion_api=f"127.0.0.1:{settings.api_port}",
        domain=settings.domain,
        ttl=settings.dns_ttl,
        recursion_from=[settings.cluster_cidr, "127.0.0.0/8"]
        + (list(ENGINE_RANGES) if settings.container_engine != "none" else [])
        + ([settings.access_cidr] if settings.access_enabled else []),
        after_units=["jiji-corrosion.service"],
        metrics_listen=f"{plan.mesh_address}:{settings.dns_metrics_port}" if settings.metrics_enabled else "",
    )


def template_file(name: str, **values: object) -> str:
    """Any of our templates with exactly `values` (StrictUndefined), in the one environment the
    program renders with: tests render a unit with values of their own this way."""
    return _ENV.get_template(name).render(**values)


def step_script(kind: str, **values: object) -> str:
    return _ENV.get_template(f"steps/{kind}.sh.j2").render(**values)


def step_library(helper: str, helper_sha256: str) -> str:
    """The shell functions the steps source: the same on every server. `helper` is where the step
    helper they run is staged (steps.helper_path) and `helper_sha256` its content, which the
    library checks before it runs it; the library's hash changes with it."""
    return _ENV.get_template("steps/_lib.sh.j2").render(helper=helper, helper_sha256=helper_sha256)


def registrar_unit(settings: MeshSettings) -> str:
    """`jiji-net registrar`, which puts this server's containers into the registry (docker and podman only)."""
    return _ENV.get_template("jiji-registrar.service.j2").render(
        engine_unit=f"{settings.container_engine}.service", network="jiji", reconcile_interval=30
    )


def jit_unit(settings: MeshSettings, plan: ServerPlan) -> str:
    """`jiji-net jit`, which lets access peers into jiji0 on their first handshake and opens their
    allowed ports on the mesh address (never Corrosion's)."""
    return _ENV.get_template("jiji-jit.service.j2").render(
        mesh_address=plan.mesh_address,
        closed_ports=f"{settings.gossip_port},{settings.api_port}",
        port=settings.wireguard_port,
        key_path=layout.WIREGUARD_KEY,
        registry=f"127.0.0.1:{settings.api_port}",
        access_cidr=settings.access_cidr,
        idle_timeout=settings.access_idle_timeout,
    )


def metrics_unit(settings: MeshSettings, plan: ServerPlan) -> str:
    """`jiji-net metrics`, the host's Prometheus endpoint on the mesh address."""
    return _ENV.get_template("jiji-metrics.service.j2").render(listen=f"{plan.mesh_address}:{settings.metrics_port}")


def rejoin_unit() -> str:
    """`jiji-net rejoin`, which restarts Corrosion when a healed partition left it outside the cluster."""
    return _ENV.get_template("jiji-rejoin.service.j2").render()


@functools.cache
def corrosion_schema() -> str:
    return (_HOSTBIN / "corrosion-schema.sql").read_text()


def host_config(settings: MeshSettings, plan: ServerPlan) -> str:
    """What the host tool (`jiji-net status`, `gc`, ...) needs to know about its server."""
    return (
        json.dumps(
            {
                "server": plan.name,
                "mesh_address": plan.mesh_address,
                "subnet": plan.subnet,
                "container_engine": settings.container_engine,
                "domain": settings.domain,
                "corrosion_api": f"127.0.0.1:{settings.api_port}",
                "gossip_port": settings.gossip_port,
                **({"access_cidr": settings.access_cidr} if settings.access_enabled else {}),
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )
