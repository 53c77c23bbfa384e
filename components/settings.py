"""The one place that reads Pulumi config: stack values in, validated model values out.

Values reach the model as the stack holds them, never coerced with int() or str() here:
plan.validate refuses a wrong type naming the setting, where a coercion would have turned
`index: 1.9` into 1 and `index: "1"` into a number. Every problem is reported at once, before
any resource exists, so bad input never reaches a server.
"""

from __future__ import annotations

import re
from typing import Any

import pulumi

from .model import CorrosionSource, MeshSettings, Server
from .plan import ConfigError, validate

_SERVER_KEYS = {"name", "host", "index", "port", "user", "endpoint", "private_address", "host_key", "gone"}
# A gone server needs these too: its name and index say which resources leave the state.
_REQUIRED_KEYS = {"name", "host", "index"}
# What Pulumi's get_int hands to int(), which also takes " 22", "+22", "1_000" and non-ASCII digits.
_INTEGER_TEXT = re.compile(r"-?[0-9]+")


def servers_from(raw: Any) -> list[Server]:
    """The servers list of the stack as model values; ConfigError if its shape is wrong (values
    are checked by plan.validate)."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(
            [f"servers: {raw!r} is not a non-empty list; list each server as {{name, host, index, endpoint, host_key}}"]
        )
    out, problems = [], []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            problems.append(f"servers[{i}]: {item!r} is not a mapping; write {{name, host, index, endpoint, host_key}}")
            continue
        unknown = set(item) - _SERVER_KEYS
        missing = _REQUIRED_KEYS - set(item)
        if unknown:
            problems.append(f"servers[{i}]: unknown keys {sorted(unknown)}; allowed: {sorted(_SERVER_KEYS)}")
        if missing:
            problems.append(
                f"servers[{i}]: missing {sorted(missing)}; every server, gone or not, needs name, host and index"
            )
        if unknown or missing:
            continue
        out.append(
            Server(
                name=item["name"],
                host=item["host"],
                index=item["index"],
                port=item.get("port", 22),
                user=item.get("user", "root"),
                endpoint=item.get("endpoint"),
                private_address=item.get("private_address"),
                host_key=item.get("host_key"),
                gone=item.get("gone", False),
            )
        )
    if problems:
        raise ConfigError(problems)
    return out


def load() -> tuple[MeshSettings, list[Server], pulumi.Output[str]]:
    """Settings, servers and the SSH key (kept a secret Output) of the current stack."""
    cfg = pulumi.Config()
    problems: list[str] = []
    servers: list[Server] = []
    raw_servers = _servers_value(cfg, problems)
    if raw_servers is not None:
        try:
            servers = servers_from(raw_servers)
        except ConfigError as err:
            problems.extend(err.problems)
    settings = MeshSettings(
        cluster_cidr=_text(cfg, "cluster_cidr", MeshSettings.cluster_cidr),
        subnet_prefix_len=_integer(cfg, "subnet_prefix_len", MeshSettings.subnet_prefix_len),
        wireguard_port=_integer(cfg, "wireguard_port", MeshSettings.wireguard_port),
        mtu=_integer(cfg, "mtu", MeshSettings.mtu),
        domain=_text(cfg, "domain", MeshSettings.domain),
        dns_ttl=_integer(cfg, "dns_ttl", MeshSettings.dns_ttl),
        container_engine=_text(cfg, "container_engine", MeshSettings.container_engine),
        # Pulumi.yaml defaults these to "", which means "not set".
        corrosion=CorrosionSource(
            url=cfg.get("corrosion_url") or None,
            sha256=cfg.get("corrosion_sha256") or None,
            local_path=cfg.get("corrosion_local_path") or None,
        ),
        allow_unpinned_host_keys=_boolean(cfg, "allow_unpinned_host_keys", MeshSettings.allow_unpinned_host_keys),
        container_host_ports=_ports(cfg),
    )
    # With unreadable servers, the other settings are still checked (validate takes an empty list).
    try:
        validate(settings, servers)
    except ConfigError as err:
        problems.extend(err.problems)
    key = cfg.get_secret("ssh_private_key")
    if key is None:
        problems.append("ssh_private_key: missing; set it with `pulumi config set --secret ssh_private_key < KEYFILE`")
    if problems or key is None:
        raise ConfigError(problems)
    return settings, servers, key


def _servers_value(cfg: pulumi.Config, problems: list[str]) -> Any:
    try:
        return cfg.require_object("servers")
    except pulumi.ConfigMissingError:
        problems.append("servers: missing; list the servers as jiji-net:servers in the stack file (see README)")
    except pulumi.ConfigTypeError:
        problems.append(
            f"servers: {cfg.get('servers')!r} is not a list in JSON or YAML; write a list of {{name, host, index, ...}}"
        )
    return None


def _text(cfg: pulumi.Config, key: str, default: str) -> str:
    # Only an unset key takes the default: an explicit "" is a value, and validate refuses it.
    value = cfg.get(key)
    return default if value is None else value


def _integer(cfg: pulumi.Config, key: str, default: int) -> Any:
    """The setting as an int when its text is a plain integer; otherwise the text as typed, which
    plan.validate refuses naming the setting (rather than Pulumi's ConfigTypeError, or a number
    get_int read out of text like " 22" or "1_000")."""
    text = cfg.get(key)
    if text is None:
        return default
    try:
        value = cfg.get_int(key)
    except pulumi.ConfigTypeError:
        return text
    return value if _INTEGER_TEXT.fullmatch(text) else text


def _boolean(cfg: pulumi.Config, key: str, default: bool) -> Any:
    """The setting as a bool, or its text as typed when it is not true/false (validate names it)."""
    if cfg.get(key) is None:
        return default
    try:
        return cfg.get_bool(key)
    except pulumi.ConfigTypeError:
        return cfg.get(key)


def _ports(cfg: pulumi.Config) -> Any:
    """container_host_ports as a tuple, or the value as typed when it is not a list (validate names it)."""
    raw = cfg.get_object("container_host_ports")
    if raw is None:
        return ()
    return tuple(raw) if isinstance(raw, list) else raw
