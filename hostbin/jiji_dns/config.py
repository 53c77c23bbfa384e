"""Command-line flags with environment fallbacks (jiji's JIJI_* names), validated once."""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

from jiji_common import layout

FALLBACK_UPSTREAMS = ("8.8.8.8", "1.1.1.1")
# Where systemd-resolved writes the upstreams it really uses; /etc/resolv.conf then names only its
# stub on 127.0.0.53, which we skip (it may be us, and forwarding to it loops split-horizon names).
RESOLVED_UPSTREAMS = layout.RESOLVED_UPSTREAMS
# A day: resolvers cap TTLs there anyway (unbound's cache-max-ttl is 86400). The program refuses
# more (jiji_net/validation.py DNS_TTL_MAX; tests/test_bounds.py holds the two equal).
MAX_TTL = 86400


class ConfigError(ValueError):
    """A setting with a bad value; the message names the setting and the fix."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def family_v6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family_v6 else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Config:
    listen: tuple[Endpoint, ...]
    corrosion_api: Endpoint
    domain: str
    ttl: int
    negative_ttl: int
    upstreams: tuple[Endpoint, ...]
    upstream_timeout: float
    recursion_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    reconnect_base: float
    # Reconnects to the local API, whose common outage is a restart of a second or two (the rejoin
    # watch restarts Corrosion after a healed partition): a refused connect on loopback costs
    # nothing, so the wait stays short and the table follows the node again soon after it is back.
    reconnect_max: float
    # What is retried only in case it changes (a node that keeps sending broken events, an API
    # without the updates endpoint): seldom.
    retry_slow: float
    max_inflight: int
    max_tcp: int
    workers: int
    stats_socket: str | None
    subscription_sql: str
    # Prometheus endpoint (GET /metrics); None: no endpoint and nothing measured per query.
    metrics_listen: Endpoint | None = None
    # Where the upstreams came from: "--upstream", a resolv.conf path, or "fallback" (public
    # resolvers, which main logs as a warning: names only the local resolvers know stop resolving).
    upstreams_from: str = "--upstream"


def reconnect_delay(config: Config, failures: int, cap: float | None = None) -> float:
    """Exponential backoff from the configured interval, capped (reconnect_max unless given), plus
    up to half of it again as jitter, so the workers of a server and the servers of a mesh do not
    come back in step."""
    delay = min(config.reconnect_base * 2 ** max(failures - 1, 0), config.reconnect_max if cap is None else cap)
    return delay + random.uniform(0, delay / 2)


SUBSCRIPTION_SQL = (
    "SELECT c.id, c.service, c.server_id, c.ip, c.health_status, c.started_at, c.instance_id,"
    " s.project FROM containers c JOIN services s"
    " ON c.service = s.name AND c.project = s.project WHERE c.health_status = 'healthy'"
)


def parse_endpoint(text: str, default_port: int, setting: str) -> Endpoint:
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], setting, text)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(port_text, setting, text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"{setting}: {text!r} is not an IP address[:port]; write e.g. 10.210.0.1:53 or [fd00::1]:53"
        ) from None
    return Endpoint(host, port)


def _port(text: str, setting: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"{setting}: {whole!r} has a bad port; use 1-65535")
    return int(text)


def resolv_conf_upstreams(path: str, own: Sequence[Endpoint]) -> list[Endpoint]:
    """nameserver lines of resolv.conf, minus loopback and our own listen addresses."""
    own_hosts = {e.host for e in own}
    found = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    host = parts[1].split("%")[0]
                    try:
                        addr = ipaddress.ip_address(host)
                    except ValueError:
                        continue
                    if addr.is_loopback or host in own_hosts:
                        continue
                    found.append(Endpoint(host, 53))
    except OSError:
        pass
    return found


def _env(names: Sequence[str], default: str | None) -> str | None:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return default


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jiji-dns", description=__doc__)
    p.add_argument("--listen", help="comma-separated ip:port list (env JIJI_LISTEN_ADDR); required")
    p.add_argument("--corrosion-api", help="Corrosion API ip:port (env JIJI_CORROSION_API; default 127.0.0.1:9220)")
    p.add_argument("--domain", help="service domain (env JIJI_SERVICE_DOMAIN; default jiji)")
    p.add_argument("--ttl", help="TTL of answers in seconds (env JIJI_DNS_TTL; default 60)")
    p.add_argument("--negative-ttl", help="SOA minimum for negative answers (env JIJI_DNS_NEGATIVE_TTL; default 5)")
    p.add_argument("--upstream", help="comma-separated upstream resolvers (env JIJI_UPSTREAMS; default: resolv.conf)")
    p.add_argument("--resolv-conf", default=layout.RESOLV_CONF, help="where to read upstreams when none are given")
    p.add_argument("--upstream-timeout", help="seconds per upstream (env JIJI_UPSTREAM_TIMEOUT; default 5)")
    p.add_argument(
        "--recursion-from",
        help="comma-separated CIDRs allowed to recurse (env JIJI_RECURSION_FROM; default 10.210.0.0/16,127.0.0.0/8,::1/128)",
    )
    p.add_argument(
        "--reconnect-interval", help="first reconnect delay in ms (env JIJI_RECONNECT_INTERVAL; default 250)"
    )
    p.add_argument(
        "--max-inflight",
        help="most forwarded queries at once, UDP and TCP, per worker (env JIJI_MAX_INFLIGHT; default 1024)",
    )
    p.add_argument(
        "--max-tcp-connections", help="most open TCP client connections per worker (env JIJI_MAX_TCP; default 256)"
    )
    p.add_argument(
        "--workers",
        help="worker processes sharing the listen addresses (env JIJI_DNS_WORKERS; default auto = min(CPUs, 4))",
    )
    p.add_argument(
        "--stats-socket",
        help=f"Unix socket that answers counters as JSON (env JIJI_STATS_SOCKET; default {layout.DNS_STATS_SOCKET}; 'none' disables)",
    )
    p.add_argument(
        "--metrics-listen",
        help="ip:port of the Prometheus endpoint, GET /metrics (env JIJI_METRICS_LISTEN; default none: off)",
    )
    return p


def load(argv: Sequence[str] | None = None) -> Config:
    args = build_parser().parse_args(argv)
    listen_text = args.listen or _env(["JIJI_LISTEN_ADDR"], None)
    if not listen_text:
        raise ConfigError(
            "--listen (JIJI_LISTEN_ADDR) is required: give the mesh address, e.g. 10.210.0.1:53; jiji-dns never binds 0.0.0.0 by default"
        )
    listen = tuple(parse_endpoint(t, 53, "--listen") for t in listen_text.split(",") if t.strip())
    api = parse_endpoint(
        args.corrosion_api or _env(["JIJI_CORROSION_API"], "127.0.0.1:9220") or "", 9220, "--corrosion-api"
    )
    domain = (args.domain or _env(["JIJI_SERVICE_DOMAIN"], "jiji") or "jiji").strip(".").lower()
    if not domain or any(not label or len(label) > 63 for label in domain.split(".")):
        raise ConfigError(f"--domain: {domain!r} is not a DNS name; use e.g. jiji")
    ttl = _int(args.ttl or _env(["JIJI_DNS_TTL"], "60"), "--ttl", 0, MAX_TTL)
    negative_ttl = _int(args.negative_ttl or _env(["JIJI_DNS_NEGATIVE_TTL"], "5"), "--negative-ttl", 0, 86400)
    upstream_text = args.upstream or _env(["JIJI_UPSTREAMS"], None)
    if upstream_text:
        upstreams = [parse_endpoint(t, 53, "--upstream") for t in upstream_text.split(",") if t.strip()]
        upstreams_from = "--upstream"
    else:
        upstreams, upstreams_from = system_upstreams(args.resolv_conf, listen)
    timeout = float(_int(args.upstream_timeout or _env(["JIJI_UPSTREAM_TIMEOUT"], "5"), "--upstream-timeout", 1, 60))
    nets_text = args.recursion_from or _env(["JIJI_RECURSION_FROM"], "10.210.0.0/16,127.0.0.0/8,::1/128") or ""
    try:
        nets = tuple(ipaddress.ip_network(t.strip(), strict=False) for t in nets_text.split(",") if t.strip())
    except ValueError as e:
        raise ConfigError(f"--recursion-from: {e}; give CIDRs such as 10.210.0.0/16") from None
    reconnect_ms = _int(
        args.reconnect_interval or _env(["JIJI_RECONNECT_INTERVAL"], "250"), "--reconnect-interval", 10, 600000
    )
    inflight = _int(args.max_inflight or _env(["JIJI_MAX_INFLIGHT"], "1024"), "--max-inflight", 1, 65535)
    max_tcp = _int(args.max_tcp_connections or _env(["JIJI_MAX_TCP"], "256"), "--max-tcp-connections", 1, 65535)
    workers = parse_workers(args.workers or _env(["JIJI_DNS_WORKERS"], "auto") or "auto")
    stats = args.stats_socket or _env(["JIJI_STATS_SOCKET"], layout.DNS_STATS_SOCKET)
    metrics_text = args.metrics_listen or _env(["JIJI_METRICS_LISTEN"], "none") or "none"
    metrics = None if metrics_text == "none" else parse_endpoint(metrics_text, 9481, "--metrics-listen")
    if metrics is not None and workers > 1 and stats == "none":
        raise ConfigError(
            "--metrics-listen with more than one worker needs the stats socket (the workers' counters are read there); drop --stats-socket none"
        )
    if metrics is not None and any((e.host, e.port) == (metrics.host, metrics.port) for e in listen):
        raise ConfigError(f"--metrics-listen {metrics} is also a DNS listen address; give it a port of its own")
    return Config(
        listen=listen,
        corrosion_api=api,
        domain=domain,
        ttl=ttl,
        negative_ttl=negative_ttl,
        upstreams=tuple(upstreams),
        upstream_timeout=timeout,
        recursion_networks=nets,
        reconnect_base=reconnect_ms / 1000,
        reconnect_max=max(2.0, reconnect_ms / 1000),
        retry_slow=60.0,
        max_inflight=inflight,
        max_tcp=max_tcp,
        workers=workers,
        stats_socket=None if stats == "none" else stats,
        subscription_sql=SUBSCRIPTION_SQL,
        upstreams_from=upstreams_from,
        metrics_listen=metrics,
    )


def system_upstreams(resolv_conf: str, own: Sequence[Endpoint]) -> tuple[list[Endpoint], str]:
    """The host's resolvers and where they were found: resolv.conf, else systemd-resolved's own
    list (when resolv.conf names only its stub), else the public fallback."""
    for path in (resolv_conf, RESOLVED_UPSTREAMS):
        found = resolv_conf_upstreams(path, own)
        if found:
            return found, path
    return [Endpoint(h, 53) for h in FALLBACK_UPSTREAMS], "fallback"


MAX_AUTO_WORKERS = 4


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which systemd's CPUAffinity= narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_workers(text: str) -> int:
    """`auto` is min(usable CPUs, 4): past one core per worker they only compete, and each
    worker holds a full copy of the table and a subscription of its own."""
    if text.strip().lower() == "auto":
        return max(1, min(usable_cpus(), MAX_AUTO_WORKERS))
    return _int(text, "--workers", 1, 64)


def _int(text: str | None, setting: str, low: int, high: int) -> int:
    try:
        value = int(text or "")
    except ValueError:
        raise ConfigError(f"{setting}: {text!r} is not a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{setting}: {value} is out of range; use {low}-{high}")
    return value
