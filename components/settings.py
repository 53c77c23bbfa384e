"""The one place that reads Pulumi config: stack values in, validated model values out.

Validation happens here, before any resource exists, so bad input never reaches a server.
"""

from __future__ import annotations

from typing import Any

import pulumi

from .model import CorrosionSource, MeshSettings, Server
from .plan import ConfigError, validate

_SERVER_KEYS = {"name", "host", "index", "port", "user", "endpoint", "private_address", "host_key", "gone"}


def servers_from(raw: Any) -> list[Server]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(["servers: must be a non-empty list of {name, host, index, endpoint, ...}"])
    out, problems = [], []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            problems.append(f"servers[{i}]: expected a mapping with name, host, index; got {item!r}")
            continue
        unknown = set(item) - _SERVER_KEYS
        missing = {"name", "host", "index"} - set(item)
        if unknown:
            problems.append(f"servers[{i}]: unknown keys {sorted(unknown)}; allowed: {sorted(_SERVER_KEYS)}")
        if missing:
            problems.append(f"servers[{i}]: missing {sorted(missing)}")
        if unknown or missing:
            continue
        try:
            out.append(
                Server(
                    name=str(item["name"]),
                    host=str(item["host"]),
                    index=int(item["index"]),
                    port=int(item.get("port", 22)),
                    user=str(item.get("user", "root")),
                    endpoint=item.get("endpoint"),
                    private_address=item.get("private_address"),
                    host_key=item.get("host_key"),
                    gone=item.get("gone", False) is True,
                )
            )
        except (TypeError, ValueError) as e:
            problems.append(f"servers[{i}]: {e}; index and port are whole numbers")
    if problems:
        raise ConfigError(problems)
    return out


def load() -> tuple[MeshSettings, list[Server], pulumi.Output[str]]:
    """Settings, servers and the SSH key (kept a secret Output) of the current stack."""
    cfg = pulumi.Config()
    servers = servers_from(cfg.require_object("servers"))
    settings = MeshSettings(
        cluster_cidr=cfg.get("cluster_cidr") or MeshSettings.cluster_cidr,
        subnet_prefix_len=cfg.get_int("subnet_prefix_len") or MeshSettings.subnet_prefix_len,
        wireguard_port=cfg.get_int("wireguard_port") or MeshSettings.wireguard_port,
        mtu=cfg.get_int("mtu") or MeshSettings.mtu,
        domain=cfg.get("domain") or MeshSettings.domain,
        dns_ttl=cfg.get_int("dns_ttl") or MeshSettings.dns_ttl,
        container_engine=cfg.get("container_engine") or MeshSettings.container_engine,
        corrosion=CorrosionSource(
            url=cfg.get("corrosion_url") or None,
            sha256=cfg.get("corrosion_sha256") or None,
            local_path=cfg.get("corrosion_local_path") or None,
        ),
    )
    validate(settings, servers)
    key = cfg.get_secret("ssh_private_key")
    if key is None:
        raise ConfigError(
            ["ssh_private_key: missing; set it with `pulumi config set --secret ssh_private_key < KEYFILE`"]
        )
    return settings, servers, key
