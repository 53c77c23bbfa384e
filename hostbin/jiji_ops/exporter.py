"""`jiji-net metrics`: this server's Prometheus endpoint (jiji-metrics.service), beside jiji-dns's
own. Everything is read when Prometheus asks, nothing is polled in between: WireGuard's peers
(`wg show jiji0 dump`), our units (one `systemctl show`), Corrosion (its API and its members), the
registry's rows of this server's containers, the counters the registrar, the rejoin watch and
jiji-jit write (jiji_common/counters.py), and drift against the steps' ledgers (drift.py).

A scrape runs a handful of short subprocesses; scrapes are served one at a time (Prometheus asks
every 15 s or so) and each connection gets REQUEST_TIMEOUT s, so a slow or hostile client ties up
one thread for at most that long and never reaches anything but this process.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import socketserver
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from jiji_common import counters, layout
from jiji_common.promtext import Exposition

from . import drift, sources
from .corrosion import Corrosion, CorrosionError
from .members import parse_members
from .wg import Interface, Peer, names_from_config, parse_dump

UNITS = ("wg-quick@jiji0", "jiji-corrosion", "jiji-dns", "jiji-net-network", "jiji-registrar", "jiji-rejoin", "jiji-jit")
REQUEST_TIMEOUT = 5.0
DEFAULT_PORT = 9480


@dataclass
class HostSample:
    """One scrape's facts (gathered by `gather`, rendered by the pure `render`)."""

    server: str
    wireguard: Interface | None
    peer_names: dict[str, str]  # public key -> server name or access peer name
    access_cidr: str | None
    units: dict[str, tuple[str, int]]  # installed unit -> (ActiveState, NRestarts)
    api_up: bool
    members: int | None  # Corrosion members seen, this node included; None: not asked
    servers: int | None  # servers in the registry; None: the registry could not be read
    containers: dict[str, int] = field(default_factory=dict)
    registrar: dict[str, Any] | None = None
    rejoin: dict[str, Any] | None = None
    jit: dict[str, Any] | None = None
    drift: dict[str, int] | None = None  # kind -> findings; None: the ledgers could not be read
    seconds: float = 0.0


def peer_kind(allowed_ips: tuple[str, ...], access_cidr: str | None) -> str:
    if access_cidr:
        net = ipaddress.ip_network(access_cidr, strict=False)
        for a in allowed_ips:
            try:
                if ipaddress.ip_network(a, strict=False).subnet_of(net):  # type: ignore[arg-type]
                    return "access"
            except (ValueError, TypeError):
                continue
    return "server"


def render(s: HostSample) -> str:
    e = Exposition()
    peers = s.wireguard.peers if s.wireguard is not None else ()
    labels: list[tuple[Peer, dict[str, object]]] = [
        (p, {"peer": s.peer_names.get(p.public_key, p.public_key[:8]), "kind": peer_kind(p.allowed_ips, s.access_cidr),
             "public_key": p.public_key})
        for p in peers
    ]  # fmt: skip
    e.one("jiji_wireguard_up", "gauge", "1 when jiji0 exists and `wg show` reads it.", int(s.wireguard is not None))
    e.family(
        "jiji_wireguard_peer_last_handshake_timestamp_seconds", "gauge",
        "Unix time of the peer's latest handshake on jiji0 (0: never); its age is time() minus this.",
        [(lab, p.latest_handshake) for p, lab in labels],
    )  # fmt: skip
    e.family(
        "jiji_wireguard_peer_receive_bytes_total", "counter", "Bytes received from the peer on jiji0.",
        [(lab, p.rx_bytes) for p, lab in labels],
    )  # fmt: skip
    e.family(
        "jiji_wireguard_peer_transmit_bytes_total", "counter", "Bytes sent to the peer on jiji0.",
        [(lab, p.tx_bytes) for p, lab in labels],
    )  # fmt: skip
    e.family(
        "jiji_wireguard_peer_info", "gauge", "The peer's current endpoint (address:port it was last heard from).",
        [({**lab, "endpoint": p.endpoint or ""}, 1) for p, lab in labels],
    )  # fmt: skip
    if s.servers is not None:
        e.one("jiji_mesh_servers", "gauge", "Servers of the mesh in the registry, this one included.", s.servers)
    e.family(
        "jiji_unit_active", "gauge", "1 when the systemd unit is active.",
        [({"unit": u}, int(state == "active")) for u, (state, _) in sorted(s.units.items())],
    )  # fmt: skip
    e.family(
        "jiji_unit_restarts_total", "counter", "Restarts systemd made of the unit after it failed (NRestarts).",
        [({"unit": u}, n) for u, (_, n) in sorted(s.units.items())],
    )  # fmt: skip
    e.one("jiji_corrosion_api_up", "gauge", "1 when the local Corrosion API answered a query.", int(s.api_up))
    if s.members is not None:
        e.one("jiji_corrosion_members", "gauge", "Corrosion members this node sees, itself included.", s.members)
    e.family(
        "jiji_containers", "gauge", "This server's containers in the registry, by health.",
        [({"health": h}, n) for h, n in sorted(s.containers.items())],
    )  # fmt: skip
    if s.registrar is not None:
        e.one("jiji_registrar_events_total", "counter", "Engine events about containers on the jiji network.", _n(s.registrar, "events"))
        e.one("jiji_registrar_errors_total", "counter", "Registrar errors: malformed events or inspects, failed rounds (retried).", _n(s.registrar, "errors"))
    if s.rejoin is not None:
        e.one("jiji_rejoin_restarts_total", "counter", "Restarts of Corrosion by the rejoin watch after a healed partition.", _n(s.rejoin, "restarts"))
    if s.jit is not None:
        e.one("jiji_jit_installs_total", "counter", "Access peers installed into jiji0 on their handshake.", _n(s.jit, "installs"))
        e.family("jiji_jit_refusals_total", "counter", "Handshake initiations refused, by reason.", _by(s.jit, "refusals"))
        e.family("jiji_jit_removals_total", "counter", "Access peers taken out of jiji0, by reason.", _by(s.jit, "removals"))
    if s.drift is not None:
        e.family(
            "jiji_drift_items", "gauge", "What differs from the last pulumi up's ledgers (see `jiji-net ready`), by kind.",
            [({"kind": k}, s.drift.get(k, 0)) for k in drift.KINDS],
        )  # fmt: skip
    e.one("jiji_exporter_scrape_duration_seconds", "gauge", "Time this scrape took to gather.", round(s.seconds, 6))
    return e.text()


def _n(c: dict[str, Any], name: str) -> int:
    value = c.get(name, 0)
    return value if isinstance(value, int) else 0


def _by(c: dict[str, Any], name: str) -> list[tuple[dict[str, object], float]]:
    family = c.get(name, {})
    return [({"reason": r}, n) for r, n in sorted(family.items())] if isinstance(family, dict) else []


def unit_states(units: tuple[str, ...] = UNITS) -> dict[str, tuple[str, int]]:
    """Installed units only (LoadState loaded), with their state and automatic restarts."""
    code, text = sources.run(["systemctl", "show", "--property=Id,LoadState,ActiveState,NRestarts", *units])
    if code != 0:
        return {}
    out = {}
    for name, props in sources.parse_systemctl_show(text).items():
        if props.get("LoadState") == "loaded":
            restarts = props.get("NRestarts", "0")
            out[name] = (props.get("ActiveState", "unknown"), int(restarts) if restarts.isdigit() else 0)
    return out


def gather(host: sources.HostConfig, corrosion: Corrosion) -> HostSample:
    started = time.monotonic()
    code, dump = sources.wg_dump()
    wireguard = parse_dump(dump) if code == 0 else None
    names = names_from_config(sources.wg_config())
    api_up, servers, containers = True, None, {}
    try:
        _, rows = corrosion.query("SELECT id, wireguard_pubkey FROM servers")
        names.update({str(key): str(name) for name, key in rows})
        servers = len(rows)
        if host.access_cidr:
            _, rows = corrosion.query("SELECT name, public_key FROM access_peers")
            names.update({str(key): str(name) for name, key in rows})
        _, rows = corrosion.query(
            "SELECT health_status, count(*) FROM containers WHERE server_id = ? GROUP BY health_status", [host.server]
        )
        containers = {str(h): int(n) for h, n in rows}
    except CorrosionError:
        api_up = False
    units = unit_states()
    members = None
    if units.get("jiji-corrosion", ("", 0))[0] == "active":
        code, text = sources.corrosion_members()
        if code == 0:
            try:
                members = len(parse_members(text)) + 1
            except ValueError:
                members = None
    found: dict[str, int] | None = {}
    try:
        counted: dict[str, int] = {}
        for f in drift.findings():
            counted[f.kind] = counted.get(f.kind, 0) + 1
        found = counted
    except OSError:
        found = None
    return HostSample(
        server=host.server,
        wireguard=wireguard,
        peer_names=names,
        access_cidr=host.access_cidr,
        units=units,
        api_up=api_up,
        members=members,
        servers=servers,
        containers=containers,
        registrar=counters.read(layout.REGISTRAR_COUNTERS),
        rejoin=counters.read(layout.REJOIN_COUNTERS),
        jit=counters.read(layout.JIT_COUNTERS),
        drift=found,
        seconds=time.monotonic() - started,
    )


class _Server(socketserver.TCPServer):
    # One scrape at a time: every request runs the same subprocesses, so concurrency would only
    # multiply their cost; a waiting connection sits in the listen backlog.
    allow_reuse_address = True
    request_queue_size = 16
    timeout = REQUEST_TIMEOUT


def serve(host: sources.HostConfig, listen: tuple[str, int]) -> int:
    corrosion = Corrosion(host.corrosion_api)

    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT  # per socket operation: a client that stalls is dropped

        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "metrics are at /metrics")
                return
            body = render(gather(host, corrosion)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # one line per scrape would fill the journal

    family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
    _Server.address_family = family
    with _Server(listen, Handler) as server:
        server.serve_forever()
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--listen",
        help=f"ip:port to serve /metrics on (default: this server's mesh address, port {DEFAULT_PORT})",
    )


def listen_address(text: str | None, host: sources.HostConfig) -> tuple[str, int]:
    if not text:
        return host.mesh_address, DEFAULT_PORT
    address, _, port = text.rpartition(":")
    address = address.strip("[]")
    ipaddress.ip_address(address)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen {text!r}: give ip:port, e.g. 10.210.0.1:{DEFAULT_PORT}")
    return address, int(port)


def run(args: argparse.Namespace) -> int:
    host = sources.HostConfig.load(args.host_config)
    try:
        listen = listen_address(args.listen, host)
    except ValueError as e:
        print(f"jiji-net metrics: {e}")
        return 2
    try:
        return serve(host, listen)
    except OSError as e:
        print(f"jiji-net metrics: cannot serve on {listen[0]}:{listen[1]}: {e.strerror}")
        return 1


