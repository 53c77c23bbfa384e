"""Renders the files a server gets, from plain values (no Pulumi imports; golden-tested)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jinja2

from .model import MeshSettings
from .plan import Peer, ServerPlan

KEY_PATH = "/etc/wireguard/jiji0.key"
CORROSION_DIR = "/var/lib/jiji/corrosion"
CORROSION_ETC = "/etc/jiji/corrosion"
# Gossip datagrams must fit inside the WireGuard MTU with room for IP/UDP headers.
GOSSIP_MAX_MTU = 1232

_HOSTBIN = Path(__file__).resolve().parent.parent / "hostbin"
# Our templates, then hostbin's (the jiji-dns unit lives beside the daemon): one environment, so
# each template is read and compiled once per run, not once per server.
_ENV = jinja2.Environment(
    loader=jinja2.ChoiceLoader(
        [jinja2.FileSystemLoader(Path(__file__).parent / "templates"), jinja2.FileSystemLoader(_HOSTBIN)]
    ),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)


def wireguard_config(settings: MeshSettings, plan: ServerPlan, peers: list[Peer], public_keys: dict[str, str]) -> str:
    """jiji0.conf for one server. Contains no secret, so it may sit in Pulumi inputs and diffs."""
    return _ENV.get_template("wireguard.conf.j2").render(
        address=f"{plan.mesh_address}/32",
        listen_port=settings.wireguard_port,
        mtu=settings.mtu,
        key_path=KEY_PATH,
        keepalive=settings.keepalive,
        peers=[
            {"name": p.name, "subnet": p.subnet, "endpoint": p.endpoint, "public_key": public_keys[p.name]}
            for p in peers
        ],
    )


def corrosion_config(settings: MeshSettings, plan: ServerPlan, others: list[ServerPlan]) -> str:
    return _ENV.get_template("corrosion.toml.j2").render(
        db_path=f"{CORROSION_DIR}/state.db",
        schema_dir=f"{CORROSION_ETC}/schemas",
        gossip_addr=f"{plan.mesh_address}:{settings.gossip_port}",
        bootstrap=[f"{o.mesh_address}:{settings.gossip_port}" for o in sorted(others, key=lambda o: o.index)],
        max_mtu=GOSSIP_MAX_MTU,
        api_addr=f"127.0.0.1:{settings.api_port}",
        admin_path="/run/jiji-corrosion/admin.sock",
    )


CORROSION_BINARY = "/usr/local/lib/jiji-net/corrosion"
CORROSION_CONFIG = f"{CORROSION_ETC}/config.toml"
CORROSION_SCHEMA = f"{CORROSION_ETC}/schemas/jiji.sql"
NETWORK_SCRIPT = "/usr/local/lib/jiji-net/network.sh"
DNS_PYZ = "/usr/local/lib/jiji-net/jiji-dns.pyz"
TOOL_PATH = "/usr/local/bin/jiji-net"


def corrosion_unit() -> str:
    return _ENV.get_template("jiji-corrosion.service.j2").render(binary=CORROSION_BINARY, config=CORROSION_CONFIG)


def network_script(settings: MeshSettings, plan: ServerPlan, bridge: str) -> str:
    return _ENV.get_template("jiji-net-network.sh.j2").render(
        subnet=plan.subnet,
        cluster_cidr=settings.cluster_cidr,
        mesh_address=plan.mesh_address,
        prefix_len=settings.subnet_prefix_len,
        mtu=settings.mtu,
        bridge=bridge,
        create_bridge=settings.container_engine == "none",
        wireguard_port=settings.wireguard_port,
        mesh_only_ports=[settings.gossip_port, settings.dns_port],
    )


def network_unit() -> str:
    return _ENV.get_template("jiji-net-network.service.j2").render(script=NETWORK_SCRIPT)


def dns_unit(settings: MeshSettings, plan: ServerPlan) -> str:
    """jiji-dns answers on the mesh address, which is also the gateway of the container bridge."""
    return _ENV.get_template("jiji-dns.service.j2").render(
        install_path=DNS_PYZ,
        listen=[f"{plan.mesh_address}:{settings.dns_port}"],
        corrosion_api=f"127.0.0.1:{settings.api_port}",
        domain=settings.domain,
        ttl=settings.dns_ttl,
        recursion_from=[settings.cluster_cidr, "127.0.0.0/8"],
        after_units=["jiji-corrosion.service"],
    )


@functools.cache
def corrosion_schema() -> str:
    return (_HOSTBIN / "corrosion-schema.sql").read_text()


HOST_CONFIG = "/etc/jiji/host.json"


def host_config(settings: MeshSettings, plan: ServerPlan) -> str:
    """What the host tool (`jiji-net status`, `gc`, ...) needs to know about its server."""
    return json.dumps(
        {
            "server": plan.name,
            "mesh_address": plan.mesh_address,
            "subnet": plan.subnet,
            "container_engine": settings.container_engine,
            "domain": settings.domain,
            "corrosion_api": f"127.0.0.1:{settings.api_port}",
        },
        indent=2,
        sort_keys=True,
    ) + "\n"
