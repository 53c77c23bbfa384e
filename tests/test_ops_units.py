"""The host tool's parsing, decisions and formatting, on outputs recorded from lab hosts."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from jiji_ops import dnsview, gc, register, rejoin, remote, sql, table
from jiji_ops.members import parse_members
from jiji_ops.report import Facts, checks, status
from jiji_ops.wg import STALE_AFTER, Interface, names_from_config, parse_dump

RECORDED = Path(__file__).parent / "recorded"
HOSTBIN = Path(__file__).parent.parent / "hostbin"
DUMP = (RECORDED / "wg-show-dump.txt").read_text()
MEMBERS = (RECORDED / "corrosion-cluster-members.txt").read_text()
STATS = json.loads((RECORDED / "jiji-dns-stats.json").read_text())
NOW = 1795387300 + 30  # 30 s after the recorded handshakes


def test_wg_dump_is_parsed_and_the_private_key_dropped() -> None:
    wg = parse_dump(DUMP)
    assert wg.listen_port == 51820 and wg.public_key == "XAdEl8dS5yJ6Lhlr4QD2Wwz5PDALgVrMWJQ3X+E0Ijg="
    assert [(p.endpoint, p.allowed_ips, p.keepalive) for p in wg.peers] == [
        ("198.18.0.11:51820", ("10.210.1.0/24",), 25),
        ("198.18.0.12:51820", ("10.210.2.0/24",), 25),
    ]
    assert wg.peers[0].rx_bytes == 7644 and wg.peers[0].tx_bytes == 11048
    assert "REDACTED" not in repr(wg)
    assert wg.peers[0].handshake_age(NOW) == 30 and not wg.peers[0].stale(NOW)
    assert wg.peers[0].stale(1795387300 + STALE_AFTER + 1)
    never = parse_dump(DUMP.replace("1795387300", "0", 1))
    assert never.peers[0].handshake_age(NOW) is None and never.peers[0].stale(NOW)


def test_members_output_is_a_stream_of_objects() -> None:
    members = parse_members(MEMBERS)
    assert [m.addr for m in members] == ["10.210.1.1:9280", "10.210.2.1:9280"]
    assert members[0].actor_id == "1baff90d-8b0b-4f68-ba9c-1b315794e3a5" and members[0].rtt_ms == pytest.approx(0.4)
    assert parse_members("") == []


def test_peer_names_come_from_the_rendered_config() -> None:
    conf = (Path(__file__).parent / "golden" / "web1-jiji0.conf").read_text()
    names = names_from_config(conf)
    assert sorted(names.values()) == ["web0", "web2"] and all(k.startswith("PUBKEY") for k in names)


def never_handshaken() -> Interface:
    wg = parse_dump(DUMP)
    return dataclasses.replace(wg, peers=tuple(dataclasses.replace(p, latest_handshake=0) for p in wg.peers))


def facts(**changes: object) -> Facts:
    wg = parse_dump(DUMP)
    base = dict(
        server="lab0",
        now=NOW,
        units={
            "wg-quick@jiji0": "active",
            "jiji-net-network": "active",
            "jiji-corrosion": "active",
            "jiji-dns": "active",
        },
        wireguard=wg,
        peer_names={wg.peers[0].public_key: "lab1", wg.peers[1].public_key: "lab2"},
        members=parse_members(MEMBERS),
        expected_members=2,
        corrosion_api=None,
        dns=STATS,
        containers={"healthy": 2},
    )
    base.update(changes)
    return Facts(**base)  # type: ignore[arg-type]


def test_a_healthy_server_passes_every_check() -> None:
    assert [(c.name, c.ok) for c in checks(facts())] == [
        ("wireguard", True), ("network", True), ("corrosion", True), ("dns", True)
    ]  # fmt: skip
    data = status(facts())
    assert [p["server"] for p in data["wireguard"]["peers"]] == ["lab1", "lab2"]
    assert data["dns"]["subscription_state"] == "live" and data["containers"] == {"healthy": 2}


@pytest.mark.parametrize(
    ("changes", "failing", "detail"),
    [
        ({"now": NOW + STALE_AFTER}, "wireguard", "no handshake in 180 s with: lab1, lab2"),
        # Never handshaken (a fresh interface): said so, not "in 180 s".
        (
            {"wireguard": never_handshaken()},
            "wireguard",
            "no handshake yet with: lab1, lab2",
        ),
        ({"wireguard": "Unable to access interface: No such device"}, "wireguard", "jiji0 is down"),
        (
            {
                "units": {
                    "wg-quick@jiji0": "active",
                    "jiji-net-network": "active",
                    "jiji-corrosion": "inactive",
                    "jiji-dns": "active",
                }
            },
            "corrosion",
            "jiji-corrosion.service is inactive",
        ),
        (
            {
                "units": {
                    "wg-quick@jiji0": "active",
                    "jiji-net-network": "failed",
                    "jiji-corrosion": "active",
                    "jiji-dns": "active",
                }
            },
            "network",
            "jiji-net-network.service (forwarding, NAT, firewall) is failed",
        ),
        ({"corrosion_api": "unreachable"}, "corrosion", "API does not answer: unreachable"),
        ({"members": parse_members(MEMBERS)[:1]}, "corrosion", "sees 1 of 2 other members"),
        ({"dns": "/run/jiji-dns/stats.sock: [Errno 2]"}, "dns", "counters unreadable"),
        ({"dns": dict(STATS, subscription_state="disconnected")}, "dns", "the subscription is disconnected"),
        (
            {"dns": dict(STATS, ready=False, subscription_state="connecting")},
            "dns",
            "not ready: subscription connecting",
        ),
    ],  # fmt: skip
)
def test_each_failure_is_named(changes: dict[str, object], failing: str, detail: str) -> None:
    bad = [c for c in checks(facts(**changes)) if not c.ok]
    assert [c.name for c in bad] == [failing] and detail in bad[0].detail


def row(
    id: str, server: str, ip: str, started: object, health: str = "healthy", instance: str = "", has: int = 1
) -> dict[str, object]:
    return dict(id=id, project="shop", service="web", server_id=server, ip=ip, health_status=health,
                started_at=started, instance_id=instance, has_service=has)  # fmt: skip


def test_dns_view_explains_every_row() -> None:
    rows = [
        row("a", "lab0", "10.210.0.2", 1),
        row("b", "lab0", "10.210.0.3", 2),  # newer on the same server: wins
        row("c", "lab1", "10.210.1.2", 1, health="unhealthy"),
        row("d", "lab2", "10.210.2.2", 5, instance="blue"),
    ]
    rows.append(dict(row("e", "lab1", "10.210.1.9", 1), service="db", has_service=0))
    view = {e["name"]: e for e in dnsview.names(rows, "jiji")}
    web = view["shop-web.jiji"]
    assert web["answers"] == ["10.210.0.3", "10.210.2.2"] and (web["healthy"], web["total"]) == (3, 4)
    why = {r["id"]: r["why"] for r in web["rows"]}
    assert why["b"] == "answered" and why["d"] == "answered"
    assert why["a"] == "hidden: b on lab0 started later (newest wins per server)"
    assert why["c"] == "not healthy (unhealthy)"
    assert view["shop-web-blue.jiji"]["answers"] == ["10.210.2.2"]
    assert (
        view["shop-db.jiji"]["answers"] == []
        and view["shop-db.jiji"]["rows"][0]["why"] == "no services row for shop/db"
    )
    assert (web["project"], web["service"]) == ("shop", "web")
    dashed = dnsview.names([dict(row("x", "lab0", "10.210.0.5", 1), project="my-shop")], "jiji")
    assert [(e["name"], e["project"], e["service"]) for e in dashed] == [("my-shop-web.jiji", "my-shop", "web")]


def test_gc_finds_rows_of_missing_containers_and_departed_servers() -> None:
    rows = [
        row("live", "lab0", "1", 1),
        row("ghost", "lab0", "2", 1),
        row("away", "gone", "3", 1),
        row("other", "lab1", "4", 1),
    ]
    stale = gc.stale_rows(rows, {"lab0", "lab1"}, "lab0", {"live"})
    assert [(r["id"], r["reason"]) for r in stale] == [
        ("ghost", "no such container on this server"),
        ("away", "server 'gone' is not in the registry"),
    ]
    # When the engine cannot be asked, only departed servers' rows are collected.
    assert [r["id"] for r in gc.stale_rows(rows, {"lab0", "lab1"}, "lab0", None)] == ["away"]


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM containers",
        "  select 1;",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "PRAGMA table_info(servers)",
        "SELECT 'delete from x' AS s",
        "EXPLAIN QUERY PLAN SELECT 1",
    ],  # fmt: skip
)
def test_reading_statements_pass(statement: str) -> None:
    assert sql.refuse_writes(statement) is None


@pytest.mark.parametrize(
    ("statement", "reason"),
    [
        ("INSERT INTO servers (id) VALUES ('x')", "INSERT changes the registry"),
        ("delete from containers", "DELETE changes the registry"),
        ("WITH x AS (SELECT 1) DELETE FROM containers", "WITH changes the registry"),
        ("SELECT 1; DROP TABLE servers", "one statement at a time"),
        ("PRAGMA journal_mode = DELETE", "PRAGMA assignments"),
        ("/* hi */ -- x\n", "empty statement"),
    ],
)
def test_writing_statements_are_refused(statement: str, reason: str) -> None:
    assert reason in (sql.refuse_writes(statement) or "")


def test_tables_align_and_colour_only_on_request() -> None:
    text = table.render(
        ["peer", "age"], [["lab1", "5s"], ["a-long-name", "never"]], colours=["red", None], colour=False
    )
    assert text.splitlines() == ["PEER         AGE", "lab1         5s", "a-long-name  never"]
    painted = table.render(["peer"], [["lab1"]], colours=["red"], colour=True)
    assert "\033[31mlab1\033[0m" in painted
    assert not table.use_colour(open("/dev/null", "w"))
    assert [table.age(s) for s in (None, 5, 300, 9000)] == ["never", "5s", "5m", "2h"]


def test_remote_strips_only_the_server_picking_options() -> None:
    argv = ["-H", "all", "--outputs=o.json", "-i", "key", "-o", "A=B", "--json", "db", "query", "SELECT 1"]
    assert remote.remote_argv(argv) == ["--json", "db", "query", "SELECT 1"]
    servers = {"lab1": {"index": 1}, "lab0": {"index": 0}}
    assert remote.pick(servers, "all") == ["lab0", "lab1"]
    with pytest.raises(SystemExit, match="not in the stack: lab9; servers are: lab0, lab1"):
        remote.pick(servers, "lab9")


def test_register_writes_only_differences_and_removes_departed_servers() -> None:
    desired = {
        "servers": [
            {
                "id": "lab0",
                "hostname": "h0",
                "subnet": "10.210.0.0/24",
                "wireguard_ip": "10.210.0.1",
                "wireguard_pubkey": "K0",
                "endpoints": ["198.18.0.10"],
            },
        ],  # fmt: skip
        "metadata": {"domain": "jiji", "cluster_cidr": "10.210.0.0/16"},
    }
    statements = register.statements(desired)
    upsert, drop_containers, drop_servers, drop_access, drop_allow, *meta = statements
    # no access_peers: the feature is off
    assert (drop_access, drop_allow) == (("DELETE FROM access_peers", []), ("DELETE FROM access_allow", []))
    assert isinstance(upsert, tuple) and upsert[1] == [
        "lab0",
        "h0",
        "10.210.0.0/24",
        "10.210.0.1",
        "K0",
        '["198.18.0.10"]',
    ]
    assert "ON CONFLICT (id) DO UPDATE" in upsert[0] and "WHERE servers.hostname IS NOT excluded.hostname" in upsert[0]
    assert drop_containers == ("DELETE FROM containers WHERE server_id NOT IN (?)", ["lab0"])
    assert drop_servers == ("DELETE FROM servers WHERE id NOT IN (?)", ["lab0"])
    assert [m[1] for m in meta if isinstance(m, tuple)] == [["cluster_cidr", "10.210.0.0/16"], ["domain", "jiji"]]
    with pytest.raises(ValueError, match="refusing to empty the registry"):
        register.statements({"servers": [], "metadata": {}})


def test_register_keeps_the_stacks_access_peers_and_leaves_those_added_at_run_time() -> None:
    desired = {
        "servers": [{"id": "lab0", "hostname": "h0", "subnet": "s", "wireguard_ip": "i", "wireguard_pubkey": "K", "endpoints": []}],
        "metadata": {},
        "access_peers": [{"name": "ana", "public_key": "P", "address": "10.211.0.5", "expires_at": 0}],
    }
    access = [s for s in register.statements(desired) if s[0].split()[2] == "access_peers"]
    upsert, drop = access
    assert upsert[1] == ["ana", "P", "10.211.0.5", 0, "stack"] and "ON CONFLICT (name) DO UPDATE" in upsert[0]
    assert drop == ("DELETE FROM access_peers WHERE origin = 'stack' AND name NOT IN (?)", ["ana"])
    # An empty list (the feature on, no peer in the stack) drops the stack's, never the others.
    (drop,) = [s for s in register.statements({**desired, "access_peers": []}) if s[0].split()[2] == "access_peers"]
    assert drop == ("DELETE FROM access_peers WHERE origin = 'stack' AND name NOT IN ()", [])


def test_echo_packets_round_trip_and_replies_are_matched_strictly() -> None:
    from jiji_ops import probe

    request = probe.echo_request(0x1234, 7)
    assert probe.checksum(request) == 0  # a packet with its checksum in place sums to zero
    ip_header = bytes([0x45]) + bytes(19)
    reply = bytes([probe.ECHO_REPLY]) + request[1:]
    assert probe.parse_reply(ip_header + reply) == (0x1234, 7)
    assert probe.parse_reply(ip_header + request) is None  # our own request seen on loopback
    assert probe.parse_reply(ip_header[:10]) is None and probe.parse_reply(ip_header + reply[:5]) is None
    assert probe.mesh_address(["10.210.7.0/24"]) == "10.210.7.1"
    assert probe.mesh_address(["bogus", "fd00::/64", "10.210.3.0/24"]) == "10.210.3.1"
    assert probe.mesh_address([]) is None


def test_a_peer_silent_over_the_tunnel_is_stale_despite_a_recent_handshake() -> None:
    wg = parse_dump(DUMP)
    silent = wg.peers[0].public_key
    f = facts(unanswered=frozenset({silent}))
    assert not wg.peers[0].stale(NOW)
    data = status(f)
    assert [p["stale"] for p in data["wireguard"]["peers"]] == [True, False]
    assert [p["answers"] for p in data["wireguard"]["peers"]] == [False, True]
    wireguard = next(c for c in checks(f) if c.name == "wireguard")
    assert not wireguard.ok and "no answer over jiji0 from: lab1" in wireguard.detail
    assert next(c for c in checks(facts(unanswered=frozenset())) if c.name == "wireguard").ok
    unprobed = status(facts())
    assert [p["answers"] for p in unprobed["wireguard"]["peers"]] == [None, None]


def test_echo_to_loopback_is_answered_and_to_an_unroutable_address_is_not() -> None:
    # In a network namespace of its own with only loopback up, so no packet leaves this test.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from jiji_ops import probe;"
        " print(sorted(probe.answering(['127.0.0.1', '127.0.0.2', '192.0.2.1'], timeout=1.0) or ['no raw socket']))"
    )
    out = subprocess.run(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "-", sys.executable, "-c", code, str(HOSTBIN)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['127.0.0.1', '127.0.0.2']"


def test_rejoin_acts_only_on_the_smaller_side_of_what_answers() -> None:
    peers = {"10.210.0.1", "10.210.2.1"}
    # lab1 after a healed partition: no members, both peers answer over jiji0.
    assert rejoin.outside([], peers, peers) == peers
    # lab0 meanwhile: lab2 is a member, lab1 answers but is not: one against one, nothing to do.
    assert rejoin.outside(["10.210.2.1:9280"], {"10.210.1.1", "10.210.2.1"}, {"10.210.1.1", "10.210.2.1"}) == set()
    # Still cut off: the non-members do not answer, so restarting would change nothing.
    assert rejoin.outside([], peers, set()) == set()
    # Everyone a member: nothing.
    assert rejoin.outside(["10.210.0.1:9280", "10.210.2.1:9280"], peers, peers) == set()
    # A split of a larger mesh: 1 member against 3 answering non-members.
    many = {"10.210.0.1", "10.210.2.1", "10.210.3.1", "10.210.4.1"}
    assert rejoin.outside(["10.210.4.1:9280"], many, many) == many - {"10.210.4.1"}
