"""Stack settings checked and turned into the typed model in one pass: pure functions, no Pulumi.

`parse` takes the stack's config as Pulumi holds it (text per key, JSON for lists) and returns
model values only when every value passed; otherwise ConfigError lists every problem at once,
each naming the setting, the bad value and the fix, before any resource exists. Every string
that ends up in a unit file, a shell script or a WireGuard config must match a strict grammar,
so no escaping further down has to make it safe.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import json
import re
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import netaddr
from jiji_common import allow as allow_entries

from .model import CONTAINER_ENGINES, AccessPeer, CorrosionSource, MeshSettings, Server
from .plan import endpoint_host, stack_half, subnet_count


class ConfigError(ValueError):
    """Bad stack configuration; every line names the setting, the bad value and the fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid jiji-net configuration:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_LABEL_CHAR = re.compile(r"[a-z0-9-]")
# POSIX's portable user name characters, not starting with '-' or a digit (those read as options
# and uids), at most 32 characters (the Linux utmp limit).
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}")
_IPV4_CHARS = re.compile(r"[0-9.]+")
# ipaddress also takes an IPv6 zone (`%` and anything after it): only plain hex, ':' and '.'.
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]+")
_PORT = re.compile(r"[0-9]{1,5}")
_PREFIX = re.compile(r"[0-9]{1,3}")
_PLAIN_CIDR = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}/[0-9]{1,2}")
# URL characters that mean nothing to a shell or a config parser. Quotes, `$`, backquotes, `;`,
# `&`, `?`, `*`, brackets, `#`, whitespace and control characters are refused, not escaped.
_URL_CHAR = re.compile(r"[A-Za-z0-9._~:/%+,=-]")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
# jiji-dns refuses a --ttl above a day (hostbin/jiji_dns/config.py): a larger one here would pass
# `pulumi preview` and leave the server without DNS. tests/test_bounds.py holds the two equal.
DNS_TTL_MAX = 86400
_PORT_KEYS = ("wireguard_port", "gossip_port", "api_port", "dns_port", "metrics_port", "dns_metrics_port")
_CIDR_EXAMPLE = "'10.210.0.0/16'"
_URL_FIX = (
    "write a plain http(s) URL of the release archive, e.g."
    " 'https://example.com/corrosion-x86_64-unknown-linux-gnu.tar.gz' (mirror the file if its URL needs a query)"
)
_ENDPOINT_FIX = (
    "write ip, ip:port or [ipv6]:port, e.g. '203.0.113.10' or '203.0.113.10:51820'"
    " (hostnames are not accepted: WireGuard would resolve them once, at start; use the address)"
)
# The settings a stack may hold (Pulumi.yaml declares the same; tests/test_settings.py holds the
# two equal). Anything else under `jiji-net:` is refused: a mistyped key would otherwise deploy
# with the default behind the operator's back.
SETTING_KEYS = (
    "servers",
    "ssh_private_key",
    "cluster_cidr",
    "subnet_prefix_len",
    "wireguard_port",
    "mtu",
    "domain",
    "dns_ttl",
    "container_engine",
    "corrosion_url",
    "corrosion_sha256",
    "corrosion_local_path",
    "container_host_ports",
    "allow_unpinned_host_keys",
    "access_enabled",
    "access_cidr",
    "access_peers",
    "access_idle_timeout",
    "metrics_enabled",
    "metrics_port",
    "dns_metrics_port",
)
_SERVER_KEYS = ("name", "host", "index", "port", "user", "endpoint", "private_address", "host_key", "gone")
# A gone server needs these too: its name and index say which resources leave the state.
_REQUIRED_KEYS = ("name", "host", "index")
# Integers as a stack file holds them; int() would also take " 22", "+22", "1_000" and
# non-ASCII digits, which are refused instead, naming the setting.
_INTEGER_TEXT = re.compile(r"-?[0-9]+")


def parse(values: Mapping[str, str]) -> tuple[MeshSettings, list[Server]]:
    """The stack's settings and servers as model values, from its config text (keys without the
    `jiji-net:` namespace, values as Pulumi holds them). Nothing is coerced: a value of the wrong
    type is refused naming the setting, where int() would have turned `index: "1"` into a number.
    `ssh_private_key` is only required to be present; its value is never read here."""
    problems: list[str] = []
    unknown = sorted(set(values) - set(SETTING_KEYS))
    if unknown:
        problems.append(
            f"{', '.join(unknown)}: not a jiji-net setting, so it would be ignored; remove it"
            f" (the settings are {', '.join(SETTING_KEYS)})"
        )
    if "ssh_private_key" not in values:
        problems.append("ssh_private_key: missing; set it with `pulumi config set --secret ssh_private_key < KEYFILE`")
    defaults = MeshSettings()
    fields: dict[str, Any] = {
        key: _integer_text(values.get(key), getattr(defaults, key))
        for key in (
            "subnet_prefix_len", "wireguard_port", "mtu", "dns_ttl", "access_idle_timeout", "metrics_port", "dns_metrics_port"
        )  # fmt: skip
    }
    for key in ("cluster_cidr", "domain", "container_engine", "access_cidr"):
        # Only an unset key takes the default: an explicit "" is a value, and is refused.
        fields[key] = values.get(key, getattr(defaults, key))
    fields["allow_unpinned_host_keys"] = _boolean_text(values.get("allow_unpinned_host_keys"), False)
    fields["access_enabled"] = _boolean_text(values.get("access_enabled"), False)
    fields["metrics_enabled"] = _boolean_text(values.get("metrics_enabled"), True)
    fields["container_host_ports"] = _ports_value(values.get("container_host_ports"))
    # Pulumi.yaml defaults the corrosion keys to "", which means "not set".
    corrosion = CorrosionSource(
        url=values.get("corrosion_url") or None,
        sha256=values.get("corrosion_sha256") or None,
        local_path=values.get("corrosion_local_path") or None,
    )
    fields["access_peers"] = _access_drafts(values.get("access_peers"), problems)
    draft = SimpleNamespace(**{**vars(defaults), **fields, "corrosion": corrosion})
    servers = _server_drafts(values.get("servers"), problems)
    # With unreadable servers, the other settings are still checked (validate takes an empty list).
    try:
        validate(draft, servers)
    except ConfigError as err:
        problems.extend(err.problems)
    if problems:
        raise ConfigError(problems)
    try:
        draft.access_peers = tuple(AccessPeer(**vars(p)) for p in draft.access_peers)
        return MeshSettings(**vars(draft)), [Server(**vars(s)) for s in servers]
    except TypeError as e:
        # validate checks every type the model holds; should one slip through, it is still
        # refused as configuration, naming the field, not a traceback.
        raise ConfigError([f"{e}; write a value of that type"]) from None


def _integer_text(text: str | None, default: int) -> object:
    """The int a stack file's integer text says, or the text as typed (validate names it)."""
    if text is None:
        return default
    return int(text) if _INTEGER_TEXT.fullmatch(text) else text


def _boolean_text(text: str | None, default: bool) -> object:
    if text is None:
        return default
    return {"true": True, "false": False}.get(text, text)


def _ports_value(text: str | None) -> object:
    """container_host_ports as a tuple, or the value as typed when it is not a list (validate names it)."""
    if text is None:
        return ()
    try:
        raw = json.loads(text)
    except ValueError:
        return text
    return tuple(raw) if isinstance(raw, list) else raw


def _server_drafts(text: str | None, problems: list[str]) -> list[SimpleNamespace]:
    """The servers list as unchecked drafts (validate checks their values); a problem for each
    entry whose shape is wrong, and none of the others is checked until the list is whole."""
    if text is None:
        problems.append("servers: missing; list the servers as jiji-net:servers in the stack file (see README)")
        return []
    try:
        raw = json.loads(text)
    except ValueError:
        problems.append(
            f"servers: {text!r} is not a list in JSON or YAML; write a list of {{name, host, index, ...}}"
        )
        return []
    if not isinstance(raw, list) or not raw:
        problems.append(
            f"servers: {raw!r} is not a non-empty list; list each server as {{name, host, index, endpoint, host_key}}"
        )
        return []
    drafts, shape_problems = [], []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            shape_problems.append(
                f"servers[{i}]: {item!r} is not a mapping; write {{name, host, index, endpoint, host_key}}"
            )
            continue
        unknown = sorted(set(item) - set(_SERVER_KEYS))
        missing = [key for key in _REQUIRED_KEYS if key not in item]
        if unknown:
            shape_problems.append(f"servers[{i}]: unknown keys {unknown}; allowed: {sorted(_SERVER_KEYS)}")
        if missing:
            shape_problems.append(
                f"servers[{i}]: missing {missing}; every server, gone or not, needs name, host and index"
            )
        if not unknown and not missing:
            drafts.append(SimpleNamespace(**{**vars(_SERVER_DEFAULTS), **item}))
    problems.extend(shape_problems)
    return [] if shape_problems else drafts


_ACCESS_KEYS = ("name", "public_key", "address", "expires", "allow")
_ACCESS_FIX = (
    "write {name, public_key} (optionally address, expires and allow), e.g. {name: ana-laptop, public_key: <wg pubkey>}"
)

_RFC3339_UTC = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def _access_drafts(text: str | None, problems: list[str]) -> tuple[SimpleNamespace, ...]:
    """access_peers as unchecked drafts (validate checks their values), `expires` read as an
    RFC 3339 UTC time or unix seconds into `expires_at`."""
    if text is None:
        return ()
    try:
        raw = json.loads(text)
    except ValueError:
        raw = text
    if not isinstance(raw, list):
        problems.append(f"access_peers: {raw!r} is not a list; {_ACCESS_FIX}")
        return ()
    drafts = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            problems.append(f"access_peers[{i}]: {item!r} is not a mapping; {_ACCESS_FIX}")
            continue
        unknown = sorted(set(item) - set(_ACCESS_KEYS))
        missing = [key for key in ("name", "public_key") if key not in item]
        if unknown or missing:
            what = "; ".join(
                ([f"unknown keys {unknown} (allowed: {list(_ACCESS_KEYS)})"] if unknown else [])
                + ([f"missing {missing}"] if missing else [])
            )
            problems.append(f"access_peers[{i}]: {what}; {_ACCESS_FIX}")
            continue
        expires = item.get("expires")
        if isinstance(expires, str) and _RFC3339_UTC.fullmatch(expires):
            try:
                expires = int(datetime.datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp())
            except ValueError:
                pass  # not a real date: validate names it as typed
        allow = item.get("allow", [])
        drafts.append(
            SimpleNamespace(
                name=item["name"],
                public_key=item["public_key"],
                address=item.get("address"),
                expires_at=expires,
                allow=tuple(allow) if isinstance(allow, list) else allow,
            )
        )
    return tuple(drafts)


_SERVER_DEFAULTS = SimpleNamespace(
    port=22, user="root", endpoint=None, private_address=None, host_key=None, gone=False
)


def validate(settings: Any, servers: list[Any]) -> None:
    """Raise ConfigError listing every problem in `settings` and `servers`: drafts from parse,
    whose values may have any type, or model values (the tests check the model's extremes).

    An empty `servers` checks the settings alone: parse refuses an empty list itself, and still
    wants the other settings checked when the servers list could not be read.
    """
    problems: list[str] = []
    cluster = _check_cluster(settings.cluster_cidr, problems)
    access = _check_cidr("access_cidr", settings.access_cidr, problems, "'10.211.0.0/16'")
    prefix_ok = _integer("subnet_prefix_len", settings.subnet_prefix_len, problems, low=1, high=32, hint="use e.g. 24")
    count = _subnet_room(settings, cluster, problems) if cluster is not None and prefix_ok else None
    _check_settings(settings, problems)
    _check_servers(settings, servers, cluster, count, problems)
    if not isinstance(settings.access_enabled, bool):
        problems.append(
            f"access_enabled: {settings.access_enabled!r} is not true or false; write true to let access peers in"
        )
    elif not settings.access_enabled:
        if settings.access_peers:
            problems.append(
                "access_peers: set, but access_enabled is not true, so no server would let them in;"
                " set jiji-net:access_enabled: true (it adds a daemon, a route and firewall rules to every server)"
            )
    # With the feature off nothing uses the range: a cluster_cidr over the default one is fine.
    elif access is not None:
        _check_access(settings, servers, cluster, access, problems)
    if problems:
        raise ConfigError(problems)


def _check_cluster(value: object, problems: list[str]) -> netaddr.IPNetwork | None:
    return _check_cidr("cluster_cidr", value, problems, _CIDR_EXAMPLE)


def _check_cidr(key: str, value: object, problems: list[str], example: str) -> netaddr.IPNetwork | None:
    """An IPv4 range, only when written as its normal form `a.b.c.d/len`. It is rendered as
    typed (firewall rules, jiji-dns flags, outputs, registry rows), and netaddr also reads
    netmasks, hostmasks and a trailing newline, so anything else is refused with the normal form
    as the fix rather than rewritten behind the operator's back."""
    if not isinstance(value, str):
        problems.append(f"{key}: {value!r} is not a string; write e.g. {example}")
        return None
    try:
        network = netaddr.IPNetwork(value) if "/" in value else None
    except (netaddr.AddrFormatError, ValueError, TypeError):
        network = None
    if network is None:
        problems.append(
            f"{key}: {value!r} is not a CIDR; write an IPv4 range as a.b.c.d/len, e.g. {example}"
        )
    elif network.version != 4:
        problems.append(f"{key}: {value!r} is IPv6; use an IPv4 range such as {example}")
    elif network.ip != network.network:
        problems.append(f"{key}: {value!r} has host bits set; use {str(network.cidr)!r}")
    elif not _PLAIN_CIDR.fullmatch(value) or str(network.cidr) != value:
        problems.append(f"{key}: {value!r} is not written as a.b.c.d/len; write {str(network.cidr)!r}")
    else:
        return network
    return None


def _subnet_room(settings: MeshSettings, cluster: netaddr.IPNetwork, problems: list[str]) -> int | None:
    """How many server subnets the cluster range holds, or None if the prefix length cannot work."""
    prefix = settings.subnet_prefix_len
    if not prefix > cluster.prefixlen:
        problems.append(
            f"subnet_prefix_len: {prefix} must be longer than the cluster prefix"
            f" /{cluster.prefixlen}; use e.g. {min(cluster.prefixlen + 8, 30)}"
        )
        return None
    if prefix > 30:
        problems.append(
            f"subnet_prefix_len: /{prefix} leaves no room for containers"
            " (a subnet needs the mesh address and at least one container); use 30 or less"
        )
        return None
    return subnet_count(settings)


def _check_settings(settings: MeshSettings, problems: list[str]) -> None:
    _integer("mtu", settings.mtu, problems, low=1280, high=1500, hint="WireGuard in a 1500-byte network wants 1420")
    for key in _PORT_KEYS:
        default = getattr(MeshSettings, key)
        _integer(key, getattr(settings, key), problems, low=1, high=65535, hint=f"use a free port, e.g. {default}")
    _integer("dns_ttl", settings.dns_ttl, problems, low=0, high=DNS_TTL_MAX, hint="use seconds, e.g. 60")
    _integer(
        "access_idle_timeout",
        settings.access_idle_timeout,
        problems,
        low=30,
        high=86400,
        hint="seconds with nothing received before an access peer leaves a server's kernel, e.g. 600",
    )
    _check_ports(settings, problems)
    why = _dns_name_problem(settings.domain)
    if why is not None:
        problems.append(
            f"domain: {settings.domain!r} {why}; {_dns_fix(settings.domain, 'jiji')}"
            " (it is written into the jiji-dns unit and ends every service name)"
        )
    if settings.container_engine not in CONTAINER_ENGINES:
        problems.append(f"container_engine: {settings.container_engine!r} is not one of {', '.join(CONTAINER_ENGINES)}")
    if not isinstance(settings.allow_unpinned_host_keys, bool):
        problems.append(
            f"allow_unpinned_host_keys: {settings.allow_unpinned_host_keys!r} is not true or false;"
            " leave it out (host keys pinned) or write true, for a throwaway lab only"
        )
    ports = settings.container_host_ports
    if not isinstance(ports, tuple) or not all(_is_int(p) and 0 < p < 65536 for p in ports):
        problems.append(
            f"container_host_ports: {list(ports) if isinstance(ports, tuple) else ports!r} is not a list of ports;"
            " write whole numbers 1-65535, e.g. [8125] (containers reach only these on their host, besides DNS)"
        )
    elif settings.gossip_port in ports or settings.api_port in ports:
        problems.append(
            f"container_host_ports: {list(ports)!r} opens Corrosion's gossip or API port to containers;"
            " a container could rewrite the registry: remove it"
        )
    elif settings.metrics_enabled and (settings.metrics_port in ports or settings.dns_metrics_port in ports):
        problems.append(
            f"container_host_ports: {list(ports)!r} opens a metrics port to containers (metrics_port"
            f" {settings.metrics_port}, dns_metrics_port {settings.dns_metrics_port}); metrics are for the"
            " mesh's servers only: remove it"
        )
    if not isinstance(settings.metrics_enabled, bool):
        problems.append(f"metrics_enabled: {settings.metrics_enabled!r} is not true or false")
    _check_corrosion(settings.corrosion, problems)


def _check_access(
    settings: MeshSettings,
    servers: list[Server],
    cluster: netaddr.IPNetwork | None,
    access: netaddr.IPNetwork,
    problems: list[str],
) -> None:
    """access_cidr apart from everything else, and the access peers' values: each gets an
    address inside it, and names, keys and addresses are each the peer's own."""
    if not 8 <= access.prefixlen <= 30:
        problems.append(f"access_cidr: /{access.prefixlen} is outside /8-/30; use e.g. '10.211.0.0/16'")
        return
    if cluster is not None and (access.first <= cluster.last and cluster.first <= access.last):
        problems.append(
            f"access_cidr: {settings.access_cidr!r} overlaps cluster_cidr {settings.cluster_cidr!r}; an access"
            " peer's address must never be a server's or a container's: pick a range outside it, e.g. '10.211.0.0/16'"
        )
    for s in servers:
        for field in ("endpoint", "private_address"):
            value = getattr(s, field)
            if isinstance(value, str) and _endpoint_problem(value) is None and netaddr.IPAddress(endpoint_host(value)) in access:
                problems.append(
                    f"servers[{s.name}].{field}: {value!r} is inside access_cidr {settings.access_cidr!r};"
                    " the underlay and the access range must not overlap: move access_cidr"
                )
    peers = settings.access_peers
    if not isinstance(peers, tuple):
        return  # parse named it
    first, room = stack_half(str(access))
    if len(peers) > room:
        problems.append(
            f"access_peers: {len(peers)} peers but the lower half of access_cidr {settings.access_cidr!r}, where"
            f" the stack's peers live, holds {room} addresses; widen access_cidr"
        )
    for i, p in enumerate(peers):
        where = f"access_peers[{p.name}]" if isinstance(p.name, str) and _LABEL.fullmatch(p.name) else f"access_peers[{i}]"
        if not (isinstance(p.name, str) and _LABEL.fullmatch(p.name)):
            problems.append(
                f"{where}.name: {p.name!r} is not a lower-case DNS label (1-63 letters, digits and '-');"
                " it names the peer in the registry and in `jiji-net access`: write e.g. 'ana-laptop'"
            )
        key = _base64(p.public_key) if isinstance(p.public_key, str) else None
        if key is None or len(key) != 32 or base64.b64encode(key).decode() != p.public_key:
            problems.append(
                f"{where}.public_key: {p.public_key!r} is not a WireGuard public key (44 characters of base64);"
                " write what `wg pubkey < private.key` prints on that machine (never the private key)"
            )
        if p.address is not None:
            ip = _ip(p.address) if isinstance(p.address, str) else None
            if ip is None or ip.version != 4 or str(ip) != p.address:
                problems.append(f"{where}.address: {p.address!r} is not an IPv4 address; write e.g. '10.211.0.10', or leave it out")
            elif not first <= int(netaddr.IPAddress(p.address)) < first + room:
                problems.append(
                    f"{where}.address: {p.address!r} is not in the lower half of access_cidr {settings.access_cidr!r}"
                    f" ({netaddr.IPAddress(first)}-{netaddr.IPAddress(first + room - 1)}; the upper half is for peers"
                    " added with `jiji-net access add`); pick one there, or leave it out to have one picked"
                )
        if problem := _allow_problem(p.allow, settings):
            problems.append(f"{where}.allow: {problem}")
        if p.expires_at is not None and not (_is_int(p.expires_at) and 0 <= p.expires_at < 2**63):
            problems.append(
                f"{where}.expires: {p.expires_at!r} is not a time; write UTC as '2026-12-31T18:00:00Z' or unix seconds,"
                " or leave it out (no expiry)"
            )
    for field in ("name", "public_key", "address"):
        seen: dict[object, object] = {}
        for p in peers:
            value = getattr(p, field)
            if value is None or not isinstance(value, str):
                continue
            if value in seen:
                problems.append(
                    f"access_peers: {field} {value!r} is used by both {seen[value]!r} and {p.name!r}; each peer needs its own"
                )
            seen.setdefault(value, p.name)


def _allow_problem(allow: object, settings: MeshSettings) -> str | None:
    """Why an access peer's `allow` is refused, or None. Corrosion's ports are never opened: its
    gossip port accepts writes to the registry (every DNS answer), its API listens on loopback."""
    fix = "write a list of 'tcp/PORT' or 'udp/PORT', e.g. ['tcp/22'] for sshd on the servers' mesh addresses"
    if not isinstance(allow, tuple) or not all(isinstance(a, str) for a in allow):
        return f"{allow!r} is not a list of strings; {fix}"
    try:
        parsed = allow_entries.entries(allow)
    except ValueError as e:
        return f"{e}; {fix}"
    for entry, (_, port) in zip(allow, parsed, strict=True):
        if port in (settings.gossip_port, settings.api_port):
            return (
                f"{entry!r} opens Corrosion's gossip or API port: an access peer could rewrite the registry"
                " (every DNS answer of the mesh); remove it"
            )
    return None


def _check_ports(settings: MeshSettings, problems: list[str]) -> None:
    ports = {key: getattr(settings, key) for key in _PORT_KEYS}
    if not all(_is_int(p) for p in ports.values()):
        return
    taken: dict[int, str] = {}
    for key, port in ports.items():
        if port in taken:
            problems.append(
                f"{key}: {port} is also {taken[port]}; a server binds each on its own port: pick another,"
                f" e.g. {getattr(MeshSettings, key)}"
            )
        taken.setdefault(port, key)
    if settings.dns_port != 53 and settings.container_engine != "none":
        problems.append(
            f"dns_port: {settings.dns_port} leaves containers without DNS: docker's daemon.json `dns` and podman's"
            " `dns_servers` name an address and always ask port 53; use 53 with container_engine"
            f" {settings.container_engine!r}"
        )


def _check_corrosion(src: CorrosionSource, problems: list[str]) -> None:
    values = {"corrosion_url": src.url, "corrosion_sha256": src.sha256, "corrosion_local_path": src.local_path}
    wrong = [key for key, value in values.items() if value is not None and not isinstance(value, str)]
    for key in wrong:
        problems.append(f"{key}: {values[key]!r} is not a string; write it as text")
    if wrong:
        return
    if bool(src.url) == bool(src.local_path):
        problems.append(
            "corrosion_url, corrosion_local_path: " + ("both are set" if src.url else "neither is set") + ";"
            " set exactly one: corrosion_url with corrosion_sha256 (every server downloads that release),"
            " or corrosion_local_path (a binary uploaded from here)"
        )
    if src.url:
        why = _url_problem(src.url)
        if why is not None:
            problems.append(f"corrosion_url: {src.url!r} {why}; {_URL_FIX}")
        if not src.sha256:
            problems.append(
                "corrosion_sha256: missing; a pinned download needs its SHA-256:"
                " set the 64 hex digits `sha256sum` prints for the archive"
            )
        elif not _SHA256.fullmatch(src.sha256):
            lower = src.sha256.lower()
            fix = (
                f"write {lower!r}"
                if _SHA256.fullmatch(lower)
                else "write the 64 hex digits `sha256sum` prints for the archive"
            )
            problems.append(f"corrosion_sha256: {src.sha256!r} is not 64 lower-case hex digits; {fix}")
    elif src.sha256:
        problems.append(
            f"corrosion_sha256: {src.sha256!r} is set without corrosion_url, so nothing would check it;"
            " remove it, or set corrosion_url to the archive it is the checksum of"
        )


def _check_servers(
    settings: MeshSettings,
    servers: list[Server],
    cluster: netaddr.IPNetwork | None,
    count: int | None,
    problems: list[str],
) -> None:
    for position, s in enumerate(servers):
        where = f"servers[{s.name}]" if isinstance(s.name, str) and _LABEL.fullmatch(s.name) else f"servers[{position}]"
        _check_server(settings, s, where, cluster, count, problems)
    if count is not None and len(servers) > count:
        problems.append(
            f"servers: {len(servers)} servers but {settings.cluster_cidr} holds only {count}"
            f" /{settings.subnet_prefix_len} subnets; widen cluster_cidr or lengthen subnet_prefix_len"
        )
    # A gone server keeps its name and slot while it is listed (its resources are still in the
    # state), but its address may already belong to the machine that replaces it.
    live = [s for s in servers if s.gone is not True]
    _unique([(s.name, s.name) for s in servers if isinstance(s.name, str)], "name", problems)
    _unique([(s.name, s.index) for s in servers if _is_int(s.index)], "index", problems)
    _unique([(s.name, s.host) for s in live if isinstance(s.host, str)], "host", problems)
    _unique(
        [(s.name, endpoint_host(s.endpoint)) for s in live if isinstance(s.endpoint, str) and s.endpoint],
        "endpoint",
        problems,
    )
    if servers and not live:
        problems.append(
            "servers: every server is marked gone: true; keep at least one in service"
            " (to take the whole mesh down, run `pulumi destroy`)"
        )


def _check_server(
    settings: MeshSettings,
    s: Server,
    where: str,
    cluster: netaddr.IPNetwork | None,
    count: int | None,
    problems: list[str],
) -> None:
    if not (isinstance(s.name, str) and _LABEL.fullmatch(s.name)):
        repaired = s.name.strip().lower().replace("_", "-").replace(".", "-") if isinstance(s.name, str) else ""
        fix = f"write {repaired!r}" if _LABEL.fullmatch(repaired) else "write e.g. 'web1'"
        problems.append(
            f"{where}.name: {s.name!r} is not a lower-case DNS label (1-63 letters, digits and '-', not first or last);"
            f" it names resources, DNS rows and systemd units: {fix}"
        )
    if _integer(
        f"{where}.index", s.index, problems, low=0, high=2**31 - 1, hint="use the server's slot: 0, 1, 2, ..."
    ) and (count is not None and s.index >= count):
        problems.append(
            f"{where}.index: {s.index} is out of range 0-{count - 1} for {settings.cluster_cidr} in"
            f" /{settings.subnet_prefix_len} subnets; pick a free slot in that range, or widen cluster_cidr"
        )
    _integer(f"{where}.port", s.port, problems, low=1, high=65535, hint="use the server's SSH port, usually 22")
    if not (isinstance(s.user, str) and _USER.fullmatch(s.user)):
        problems.append(
            f"{where}.user: {s.user!r} is not a POSIX user name (a letter or '_', then letters, digits, '.', '_'"
            " or '-', at most 32); write e.g. 'root' or 'deploy'"
        )
    why = _host_problem(s.host)
    if why is not None:
        host_fix = _repaired_dns_name(s.host)
        fix = (
            f"write {host_fix!r}"
            if host_fix
            else "write an IP address or a DNS name, e.g. '203.0.113.10' or 'web1.example.com'"
        )
        problems.append(f"{where}.host: {s.host!r} {why}; {fix}")
    if not isinstance(s.gone, bool):
        problems.append(
            f"{where}.gone: {s.gone!r} is not true or false;"
            " write true for a server that is unreachable for good, or leave it out"
        )
    for field, check, fix in (
        ("endpoint", _endpoint_problem, _ENDPOINT_FIX),
        (
            "private_address",
            _private_address_problem,
            "write an IP address, optionally with its prefix length, e.g. '10.0.0.5/24'",
        ),
    ):
        value = getattr(s, field)
        if value is None:
            continue
        why = check(value)
        if why is not None:
            problems.append(f"{where}.{field}: {value!r} {why}; {fix}")
        elif cluster is not None and netaddr.IPAddress(endpoint_host(value)) in cluster:
            problems.append(
                f"{where}.{field}: {value!r} is inside cluster_cidr {settings.cluster_cidr!r};"
                " the underlay and the overlay must not overlap: give the server's underlay address"
            )
    if s.gone is True:
        # Nobody contacts a gone server: it needs no address and no host key, but one it has is
        # still a value of the model.
        if s.host_key is not None and not isinstance(s.host_key, str):
            problems.append(f"{where}.host_key: {s.host_key!r} is not a string; write the key as text, or leave it out")
        return
    if s.endpoint is None and s.private_address is None:
        problems.append(f"{where}: neither endpoint nor private_address is set; peers need one to reach it")
    if s.host_key is not None:
        why = _host_key_problem(s.host_key)
        if why is not None:
            problems.append(f"{where}.host_key: {s.host_key!r} {why}; {_keyscan_hint(s)}")
    elif settings.allow_unpinned_host_keys is not True:
        problems.append(
            f"{where}.host_key: missing, so SSH would trust whoever answers for this server; {_keyscan_hint(s)}"
            " (or, for a throwaway lab only, set jiji-net:allow_unpinned_host_keys: true)"
        )


def _keyscan_hint(s: Server) -> str:
    host = s.host if _host_problem(s.host) is None else "HOST"
    port = f"-p {s.port} " if _is_int(s.port) and s.port != 22 else ""
    return (
        f"print the key with `ssh-keyscan {port}-t ed25519 {host}` (over a network path you trust) and set"
        " host_key to the part after the host name, e.g. 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA...'"
    )


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass: `mtu: true` must not pass as 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(key: str, value: object, problems: list[str], *, low: int, high: int, hint: str) -> bool:
    """Whether `value` is an int in low-high; if not, one problem naming `key`, with `hint` as the fix."""
    if not _is_int(value):
        problems.append(f"{key}: {value!r} is not an integer; write a whole number without quotes or decimals ({hint})")
        return False
    if not low <= value <= high:
        problems.append(f"{key}: {value!r} is outside {low}-{high}; {hint}")
        return False
    return True


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`value` as a plainly written IP address (IPv4 without leading zeros, IPv6 without a zone)."""
    if _IPV4_CHARS.fullmatch(value) or (":" in value and _IPV6_CHARS.fullmatch(value)):
        try:
            return ipaddress.ip_address(value)
        except ValueError:
            return None
    return None


def _dns_name_problem(value: object) -> str | None:
    """Why `value` is not a lower-case DNS name of letter-digit-hyphen labels, or None."""
    if not isinstance(value, str):
        return "is not a string"
    if len(value) > 253:
        return f"is {len(value)} characters long, more than the 253 of a DNS name"
    labels = value.split(".")
    for label in labels:
        if not label:
            return "has an empty label (a leading, trailing or doubled dot)"
        if len(label) > 63:
            return f"has a {len(label)}-character label, more than the 63 of a DNS label"
        if not _LABEL.fullmatch(label):
            others = "".join(sorted({c for c in label if not _LABEL_CHAR.fullmatch(c)}))
            if others:
                return f"holds {others!r}; a DNS label has only lower-case letters, digits and '-'"
            return f"has the label {label!r}, which starts or ends with '-'"
    if labels[-1].isdigit():
        return "ends in an all-numeric label, which reads as a mistyped IPv4 address"
    return None


def _repaired_dns_name(value: object) -> str | None:
    """The DNS name `value` was meant to be when only case, outer dots or outer space are wrong."""
    if not isinstance(value, str):
        return None
    repaired = value.strip().strip(".").lower()
    return repaired if repaired != value and _dns_name_problem(repaired) is None else None


def _dns_fix(value: object, example: str) -> str:
    repaired = _repaired_dns_name(value)
    if repaired:
        return f"write {repaired!r}"
    return f"write lower-case labels separated by dots, e.g. {example!r}"


def _host_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return "is not a string"
    if _ip(value) is not None:
        return None
    if _IPV4_CHARS.fullmatch(value) or ":" in value:
        return "is not a valid IP address"
    why = _dns_name_problem(value)
    return None if why is None else f"is neither an IP address nor a DNS name: it {why}"


def _endpoint_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return "is not a string"
    port: str | None = None
    if value.startswith("["):
        host, bracket, port = value[1:].partition("]:")
        if not bracket or not isinstance(_ip(host), ipaddress.IPv6Address):
            return "is not [IPv6 address]:port"
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
        if not isinstance(_ip(host), ipaddress.IPv4Address):
            return "has no IPv4 address before its ':port'"
    elif _ip(value) is None:
        return "is not an IP address"
    if port is not None and not (_PORT.fullmatch(port) and 1 <= int(port) <= 65535):
        return f"has the port {port!r}, not a number 1-65535"
    return None


def _private_address_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return "is not a string"
    address, slash, length = value.partition("/")
    ip = _ip(address)
    if ip is None:
        return "is not an IP address"
    if slash and not (_PREFIX.fullmatch(length) and int(length) <= ip.max_prefixlen):
        return f"has the prefix length {length!r}, not a number 0-{ip.max_prefixlen}"
    return None


def _url_problem(value: str) -> str | None:
    if len(value) > 2048:
        return f"is {len(value)} characters long (at most 2048)"
    refused = sorted({c for c in value if not _URL_CHAR.fullmatch(c)})
    if refused:
        return f"holds {''.join(refused)!r}: characters a shell or a config file could read as syntax"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        return "is not an http or https URL"
    if not parts.hostname:
        return "names no host"
    try:
        port = parts.port
    except ValueError:
        return "has a port that is not a number 1-65535"
    if port == 0:
        return "has a port that is not a number 1-65535"
    if _ip(parts.hostname) is None and _dns_name_problem(parts.hostname) is not None:
        return f"has the host {parts.hostname!r}, neither an IPv4 address nor a DNS name"
    return None


def _host_key_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return "is not a string"
    if len(value) > 16384:
        return "is longer than any SSH host key"
    if not value.isprintable():
        return "holds a line break or another control character; a host key is one line"
    fields = value.split(" ")
    if len(fields) == 3 and fields[1] in HOST_KEY_TYPES:
        return "starts with a host name (ssh-keyscan prints one before the key)"
    if len(fields) != 2:
        return "is not 'TYPE BASE64' (two fields, one space between them, no comment)"
    kind, data = fields
    if kind not in HOST_KEY_TYPES:
        return f"has the key type {kind!r}, not one of {', '.join(HOST_KEY_TYPES)}"
    blob = _base64(data)
    if blob is None:
        return "does not hold valid base64 after the key type"
    # The key blob names its own type first: a key pasted under the wrong type, or bytes that
    # merely happen to be base64, fail here rather than at SSH time.
    if _ssh_string(blob) != kind.encode():
        return f"holds base64 that is not an {kind} key"
    if kind == "ssh-ed25519" and len(blob) != 51:
        return "holds an ssh-ed25519 key of the wrong length"
    return None


def _base64(data: str) -> bytes | None:
    if not _BASE64.fullmatch(data) or len(data) % 4:
        return None
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def _ssh_string(blob: bytes) -> bytes | None:
    """The first length-prefixed string of an SSH wire-format blob."""
    if len(blob) < 4:
        return None
    size = int.from_bytes(blob[:4], "big")
    return blob[4 : 4 + size] if 4 + size <= len(blob) else None


def _unique(pairs: list[tuple[object, object]], field: str, problems: list[str]) -> None:
    """Each (server name, value) pair's value must be its own."""
    seen: dict[object, object] = {}
    for name, value in pairs:
        if value in seen:
            problems.append(
                f"servers: {field} {value!r} is used by both {seen[value]!r} and {name!r}; each server needs its own"
            )
        else:
            seen[value] = name
