"""Command line of the host tool: `jiji-net COMMAND` on a server, as root; or, with --hosts,
the same command on servers of a stack over SSH (see remote.py)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time
from typing import Any

from jiji_common import layout

from . import (
    access,
    dnsview,
    drift,
    exporter,
    gc,
    jit,
    probe,
    promtargets,
    register,
    registrar,
    rejoin,
    remote,
    sources,
    sql,
    table,
)
from .corrosion import Corrosion, CorrosionError
from .members import parse_members
from .report import Facts, checks, status
from .wg import names_from_config, parse_dump


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jiji-net", description="See and check this server's part of the jiji mesh.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--host-config", default=sources.HOST_CONFIG, help=argparse.SUPPRESS)
    remote.add_arguments(p)
    # --json is accepted before or after the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status", parents=[common], help="WireGuard peers, Corrosion, DNS and container health on this server")
    d = sub.add_parser("dns", parents=[common], help="every DNS name with its answers and the rows behind them")
    d.add_argument("--service", help="only names of this service (service, or project-service)")
    i = sub.add_parser("inspect", parents=[common], help="network details of the containers in the registry")
    i.add_argument("--service")
    i.add_argument("--container", help="id prefix")
    g = sub.add_parser("gc", parents=[common], help="rows of containers that no longer exist (dry run unless --force)")
    g.add_argument("--force", action="store_true", help="delete the rows found")
    db = sub.add_parser("db", parents=[common], help="registry statistics and read-only queries")
    dbs = db.add_subparsers(dest="db_command", required=True)
    dbs.add_parser("stats", parents=[common], help="rows per table and database size")
    q = dbs.add_parser("query", parents=[common], help="one read-only SQL statement")
    q.add_argument("sql")
    sub.add_parser("ready", parents=[common], help="exit 0 only when WireGuard, the container network, Corrosion and DNS are healthy here")
    sub.add_parser(
        "repair", parents=[common], help="put back what changed since the last pulumi up (files, units, firewall chains), as root"
    )
    sub.add_parser("register", parents=[common], help="(used by the Pulumi program) sync servers/cluster_metadata rows from stdin JSON")
    r = sub.add_parser(
        "registrar", help="(run by jiji-registrar.service) keep this server's container rows equal to its engine's containers"
    )
    registrar.add_arguments(r)
    rj = sub.add_parser(
        "rejoin", help="(run by jiji-rejoin.service) restart Corrosion when a healed partition left it outside the cluster"
    )
    rejoin.add_arguments(rj)
    jt = sub.add_parser("jit", help="(a daemon) let declared access peers into WireGuard on their first handshake")
    jit.add_arguments(jt)
    ac = sub.add_parser("access", parents=[common], help="access peers: their wg-quick file, and those added at run time")
    access.add_arguments(ac, common)
    m = sub.add_parser("metrics", help="(run by jiji-metrics.service) serve this server's Prometheus metrics")
    exporter.add_arguments(m)
    pr = sub.add_parser("prometheus", help="Prometheus: the file_sd targets of the stack's metrics endpoints")
    promtargets.add_arguments(pr)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "access" and args.access_command == "config":
        # On the operator's machine: the stack's outputs are all it needs, no server is asked.
        try:
            print(access.wg_quick_config(remote.load_outputs(args), args.name), end="")
        except (ValueError, KeyError) as e:
            print(f"jiji-net access config: {e}", file=sys.stderr)
            return 1
        return 0
    if args.command == "prometheus":
        return promtargets.run(args)  # on the operator's machine, from the stack's outputs
    if remote.wanted(args):
        return remote.run(args, sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "register":
            print(register.run(Corrosion(), json.load(sys.stdin)))
            return 0
        if args.command == "registrar":
            return cmd_registrar(args)
        if args.command == "rejoin":
            return rejoin.run(args.interval)
        if args.command == "jit":
            return jit.run(args)
        if args.command == "metrics":
            return exporter.run(args)
        if args.command == "repair":
            return cmd_repair(args)
        host = sources.HostConfig.load(args.host_config)
        corrosion = Corrosion(host.corrosion_api)
        command = {
            "status": cmd_status,
            "ready": cmd_ready,
            "dns": cmd_dns,
            "inspect": cmd_inspect,
            "gc": cmd_gc,
            "db": cmd_db,
            "access": cmd_access,
        }
        return command[args.command](args, host, corrosion)
    except (CorrosionError, ValueError) as e:
        print(f"jiji-net {args.command}: {e}", file=sys.stderr)
        return 1


def cmd_access(args: argparse.Namespace, host: sources.HostConfig, corrosion: Corrosion) -> int:
    if args.access_command == "add":
        added = access.add(corrosion, host, args.name, args.public_key, access.lifetime(args.expires_in), allow=args.allow)
        print(json.dumps(added) if args.json else f"{added['name']}: {added['address']}, until {_utc(added['expires_at'])}")
        return 0
    if args.access_command == "remove":
        access.remove(corrosion, args.name)
        print(f"{args.name}: removed; it leaves every server's kernel as the registry change arrives")
        return 0
    peers = access.rows(corrosion)
    code, dump = sources.wg_dump()
    here = {p.public_key for p in parse_dump(dump).peers} if code == 0 else set()
    for p in peers:
        p["in_kernel_here"] = p["public_key"] in here
    if args.json:
        print(json.dumps(peers, indent=2))
        return 0
    for p in peers:
        until = _utc(p["expires_at"]) if p["expires_at"] else "no expiry"
        kernel = "in this server's kernel" if p["in_kernel_here"] else "-"
        print(f"{p['name']:<24} {p['address']:<16} {p['origin']:<6} {until:<21} {p.get('allow') or '-':<16} {kernel}")
    return 0


def _utc(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def cmd_registrar(args: argparse.Namespace) -> int:
    # Every configuration error exits with CONFIG_ERROR, which the unit does not restart on.
    try:
        settings = registrar.settings_from(args, sources.HostConfig.load(args.host_config))
    except SystemExit as e:
        print(e, file=sys.stderr)
        return registrar.CONFIG_ERROR
    except (KeyError, TypeError) as e:
        print(f"jiji-net registrar: {args.host_config} lacks or garbles {e}; run pulumi up to rewrite it", file=sys.stderr)
        return registrar.CONFIG_ERROR
    except ValueError as e:
        print(f"jiji-net registrar: {e}", file=sys.stderr)
        return registrar.CONFIG_ERROR
    return registrar.main(settings, once=args.once)


def _rows(corrosion: Corrosion, query: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    columns, rows = corrosion.query(query, params)
    return [dict(zip(columns, r, strict=True)) for r in rows]


def gather(host: sources.HostConfig, corrosion: Corrosion) -> Facts:
    units = {u: sources.unit_state(u) for u in ("wg-quick@jiji0", "jiji-corrosion", "jiji-dns", "jiji-net-network")}
    code, dump = sources.wg_dump()
    wireguard = parse_dump(dump) if code == 0 else dump
    api_error, others, containers = None, 0, {}
    peer_names = names_from_config(sources.wg_config())
    try:
        servers = _rows(corrosion, "SELECT id, wireguard_pubkey FROM servers")
        peer_names.update({s["wireguard_pubkey"]: s["id"] for s in servers})
        others = sum(1 for s in servers if s["id"] != host.server)
        counts = _rows(
            corrosion, "SELECT health_status, count(*) AS n FROM containers WHERE server_id = ? GROUP BY health_status", [host.server]
        )
        containers = {c["health_status"]: c["n"] for c in counts}
    except CorrosionError as e:
        api_error = str(e)
    if units["jiji-corrosion"] == "active":
        code, text = sources.corrosion_members()
        members: Any = parse_members(text) if code == 0 else text
    else:
        members = "jiji-corrosion is not running"
    unanswered = None
    if not isinstance(wireguard, str):
        address_of = {p.public_key: probe.mesh_address(p.allowed_ips) for p in wireguard.peers}
        answered = probe.answering(a for a in address_of.values() if a)
        if answered is not None:
            unanswered = frozenset(k for k, a in address_of.items() if a not in answered)
    return Facts(
        server=host.server,
        now=time.time(),
        units=units,
        wireguard=wireguard,
        peer_names=peer_names,
        members=members,
        expected_members=others,
        corrosion_api=api_error,
        dns=sources.dns_stats(),
        containers=containers,
        unanswered=unanswered,
        drift=drift.survey(),
    )


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str) if args.json else text)


def cmd_status(args: argparse.Namespace, host: sources.HostConfig, corrosion: Corrosion) -> int:
    facts = gather(host, corrosion)
    data = status(facts)
    colour = table.use_colour()
    parts = [table.paint(f"server {host.server}  mesh {host.mesh_address}  subnet {host.subnet}", "bold", colour), ""]
    wg = data["wireguard"]
    parts.append(f"WireGuard jiji0 ({wg['unit']})" + (f": {wg['error']}" if wg["error"] else ""))
    parts.append(
        table.render(
            ["peer", "endpoint", "allowed ips", "handshake", "rx", "tx", ""],
            [
                [p["server"], p["endpoint"] or "-", ",".join(p["allowed_ips"]), table.age(p["handshake_age_s"]),
                 table.size(p["rx_bytes"]), table.size(p["tx_bytes"]), "STALE" if p["stale"] else ""]
                for p in wg["peers"]
            ],  # fmt: skip
            colours=["red" if p["stale"] else None for p in wg["peers"]],
            colour=colour,
        )
    )
    c = data["corrosion"]
    parts += ["", f"Corrosion ({c['unit']})" + (f": API {c['api_error']}" if c["api_error"] else "")]
    if c["members_error"]:
        parts.append(f"  members: {c['members_error']}")
    else:
        parts.append(
            table.render(
                ["member", "actor", "rtt"],
                [[m["addr"], m["actor_id"], "-" if m["rtt_ms"] is None else f"{m['rtt_ms']:.1f} ms"] for m in c["members"]],
            )
        )
        parts.append(f"  {len(c['members'])} of {c['expected_members']} other servers seen")
    d = data["dns"]
    parts += ["", f"jiji-dns ({d['unit']})" + (f": {d['error']}" if d.get("error") else "")]
    if not d.get("error"):
        parts.append(
            f"  ready {d['ready']}  subscription {d['subscription_state']}  last change {d['last_change_id']}"
            f"  names {d['cache_names']}  queries {d['queries']}  forwarded {d['forwarded']}"
            f"  upstream failures {d['upstream_failures']}  resyncs {d['resyncs']}"
        )
    health = ", ".join(f"{n} {s}" for s, n in sorted(data["containers"].items())) or "none registered"
    parts += ["", f"Containers on this server: {health}", ""]
    changed = data["drift"] or []
    parts.append(f"Changed since the last pulumi up: {len(changed) or 'nothing'}")
    parts += [f"  {d['kind']} {d['name']}: {d['problem']}" for d in changed]
    parts.append("")
    for ch in data["checks"]:
        mark = table.paint("ok  ", "green", colour) if ch["ok"] else table.paint("FAIL", "red", colour)
        parts.append(f"{mark} {ch['name']}: {ch['detail']}")
    _emit(args, data, "\n".join(parts))
    return 0


def cmd_ready(args: argparse.Namespace, host: sources.HostConfig, corrosion: Corrosion) -> int:
    results = checks(gather(host, corrosion))
    ok = all(c.ok for c in results)
    data = {"server": host.server, "ready": ok, "checks": [c.__dict__ for c in results]}
    _emit(args, data, "\n".join(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}" for c in results))
    return 0 if ok else 1


def cmd_repair(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("jiji-net repair: it rewrites system files and starts units; run it as root (sudo jiji-net repair)", file=sys.stderr)
        return 1
    result = drift.repair()
    data = {"done": result.done, "failed": result.failed, "remaining": drift.as_dicts(result.remaining)}
    lines = result.done + [f"FAIL {line}" for line in result.failed]
    _emit(args, data, "\n".join(lines) or "nothing changed since the last pulumi up; nothing to do")
    return 1 if result.failed else 0


def cmd_dns(args: argparse.Namespace, host: sources.HostConfig, corrosion: Corrosion) -> int:
    entries = dnsview.names(_rows(corrosion, dnsview.ROWS_SQL), host.domain)
    if args.service:
        wanted = args.service.lower()
        entries = [e for e in entries if wanted in (e["service"].lower(), f"{e['project']}-{e['service']}".lower())]
    lines = []
    for e in entries:
        lines.append(f"{e['name']}  ->  {', '.join(e['answers']) or '(no answer)'}   healthy {e['healthy']}/{e['total']}")
        lines.append(
            table.render(
                ["  container", "server", "ip", "health", "started", "why"],
                [["  " + r["id"], r["server_id"], r["ip"], r["health_status"], r["started_at"], r["why"]] for r in e["rows"]],
            )
        )
        lines.append("")
    _emit(args, entries, "\n".join(lines).rstrip() or "no names")
    return 0


def cmd_inspect(args: argparse.Namespace, host: sources.HostConfig, corrosion: Corrosion) -> int:
    rows = _rows(
        corrosion,
        "SELECT c.id, c.project, c.service, c.server_id, c.ip, c.health_status, c.started_at, c.instance_id,"
        " s.subnet AS server_subnet, s.wireguard_ip AS server_mesh_address"
        " FROM containers c LEFT JOIN servers s ON s.id = c.server_id ORDER BY c.project, c.service, c.id",
    )
    if args.service:
        rows = [r for r in rows if args.service in (r["service"], f"{r['project']}-{r['service']}")]
    if args.container:
        rows = [r for r in rows if str(r["id"]).startswith(args.container)]
    local = sources.local_containers(host.container_engine)
    for r in rows:
        r["in_server_subnet"] = _in_subnet(r["ip"], r["server_subnet"])
        r["exists_here"] = None if r["server_id"] != host.server or local is None else r["id"] in local
    _emit(
        args,
        rows,
        table.render(
            ["container", "service", "server", "ip", "subnet ok", "via", "health", "exists here"],
            [
                [str(r["id"])[:12], f"{r['project']}-{r['service']}", r["server_id"], r["ip"],
                 "yes" if r["in_server_subnet"] else "NO", r["server_mesh_address"] or "-", r["health_status"],
                 "-" if r["exists_here"] is None else ("yes" if r["exists_here"] else "NO")]
                for r in rows
            ],  # fmt: skip
        ),
    )
    return 0


def _in_subnet(ip: str, subnet: str | None) -> bool:
    try:
        return subnet is not None and ipaddress.ip_address(ip) in ipaddress.ip_network(subnet)
    except ValueError:
        return False


def cmd_gc(args: argparse.Namespace, host: sources.HostConfig, corrosion: Corrosion) -> int:
    rows = _rows(corrosion, "SELECT id, project, service, server_id, ip, health_status FROM containers")
    servers = {r["id"] for r in _rows(corrosion, "SELECT id FROM servers")}
    local = sources.local_containers(host.container_engine)
    stale = gc.stale_rows(rows, servers, host.server, local)
    if stale and args.force:
        corrosion.execute([("DELETE FROM containers WHERE id = ?", [r["id"]]) for r in stale])
    verb = "deleted" if args.force else "would delete (dry run; --force deletes)"
    note = "" if local is not None else f"\n(could not list {host.container_engine} containers here; only rows of departed servers were checked)"
    text = "\n".join(f"{verb}: {r['id']} ({r['project']}-{r['service']} on {r['server_id']}): {r['reason']}" for r in stale)
    _emit(args, {"deleted": bool(args.force), "rows": stale}, (text or "nothing to collect") + note)
    return 0


def cmd_db(args: argparse.Namespace, host: sources.HostConfig, corrosion: Corrosion) -> int:
    if args.db_command == "query":
        why = sql.refuse_writes(args.sql)
        if why:
            print(f"jiji-net db query: refused: {why}", file=sys.stderr)
            return 2
        columns, rows = corrosion.query(args.sql)
        _emit(args, [dict(zip(columns, r, strict=True)) for r in rows], table.render(columns, rows))
        return 0
    counts = {t: corrosion.query(f"SELECT count(*) FROM {t}")[1][0][0] for t in ("servers", "services", "containers", "cluster_metadata", "access_peers")}
    db_path = layout.CORROSION_DB
    size = sum(os.path.getsize(p) for p in (db_path, db_path + "-wal") if os.path.exists(p))
    data = {"tables": counts, "database_bytes": size, "database": db_path}
    text = table.render(["table", "rows"], sorted(counts.items())) + f"\n\ndatabase {db_path}: {table.size(size)} (with WAL)"
    _emit(args, data, text)
    return 0
