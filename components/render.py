"""Renders the files a server gets, from plain values (no Pulumi imports; golden-tested)."""

from __future__ import annotations

from pathlib import Path

import jinja2

from .model import MeshSettings
from .plan import Peer, ServerPlan

KEY_PATH = "/etc/wireguard/jiji0.key"
CORROSION_DIR = "/var/lib/jiji/corrosion"
CORROSION_ETC = "/etc/jiji/corrosion"
# Gossip datagrams must fit inside the WireGuard MTU with room for IP/UDP headers.
GOSSIP_MAX_MTU = 1232

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
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
