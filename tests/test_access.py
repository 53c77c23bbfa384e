"""Access peers (issue 21) without a network: the stack setting and its addresses, the rows the
daemon reads, which kernel peers leave, and the wg-quick file `jiji-net access config` prints."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
from typing import Any

import pytest
from jiji_ops import access, jitpeers
from jiji_ops.admission import AccessPeer as DaemonPeer
from jiji_ops.sources import HostConfig
from jiji_ops.wg import Peer

from jiji_net.model import AccessPeer, MeshSettings
from jiji_net.plan import plan_access
from jiji_net.validation import ConfigError, parse

ACCESS = ipaddress.IPv4Network("10.211.0.0/16")


def key(name: str) -> str:
    return base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()


def values(**changes: Any) -> dict[str, str]:
    servers = [{"name": "a", "host": "198.18.0.10", "index": 0, "endpoint": "198.18.0.10", "host_key": None}]
    base = {
        "servers": json.dumps(servers),
        "ssh_private_key": "",
        "corrosion_local_path": "/cache/corrosion",
        "allow_unpinned_host_keys": "true",
    }
    return {**base, **{k: v if isinstance(v, str) else json.dumps(v) for k, v in changes.items()}}


def test_the_feature_is_on_only_when_enabled_and_peers_without_it_are_refused() -> None:
    assert parse(values())[0].access_enabled is False
    settings = parse(values(access_enabled="true"))[0]
    assert settings.access_enabled is True and settings.access_peers == ()
    # Off, the default range may overlap a wide cluster range: nothing uses it.
    assert parse(values(cluster_cidr="10.0.0.0/8", subnet_prefix_len=24))[0].access_enabled is False
    with pytest.raises(ConfigError, match="access_cidr: '10.211.0.0/16' overlaps cluster_cidr '10.0.0.0/8'"):
        parse(values(cluster_cidr="10.0.0.0/8", access_enabled="true"))
    with pytest.raises(ConfigError, match="access_peers: set, but access_enabled is not true"):
        parse(values(access_peers=[{"name": "ana", "public_key": key("ana")}]))
    with pytest.raises(ConfigError, match="access_enabled: 'yes' is not true or false"):
        parse(values(access_enabled="yes"))


def test_expiry_is_read_as_utc_and_bad_peers_are_refused_with_the_fix() -> None:
    settings, _ = parse(values(access_enabled="true", access_peers=[{"name": "ana", "public_key": key("ana"), "expires": "2026-12-31T18:00:00Z"}]))
    assert settings.access_peers == (AccessPeer(name="ana", public_key=key("ana"), expires_at=1798740000),)
    with pytest.raises(ConfigError) as refused:
        parse(values(access_enabled="true", access_peers=[
            {"name": "Ana", "public_key": "x" * 44, "address": "10.211.200.1", "expires": "tomorrow"},
            {"name": "b", "public_key": key("b"), "private_key": "oops"},
            {"name": "c", "public_key": key("c")},
            {"name": "c", "public_key": key("c")},
        ]))  # fmt: skip
    text = str(refused.value)
    assert "access_peers[0].name: 'Ana' is not a lower-case DNS label" in text
    assert "access_peers[0].public_key: 'xxxx" in text and "never the private key" in text
    assert "access_peers[0].address: '10.211.200.1' is not in the lower half" in text
    assert "access_peers[0].expires: 'tomorrow' is not a time" in text
    assert "access_peers[1]: unknown keys ['private_key']" in text
    assert "access_peers: name 'c' is used by both 'c' and 'c'" in text
    assert f"access_peers: public_key {key('c')!r} is used by both 'c' and 'c'" in text


def test_an_address_stays_when_other_peers_come_and_go_and_never_depends_on_order() -> None:
    settings = MeshSettings(access_enabled=True)
    peers = tuple(AccessPeer(name=f"p{i}", public_key=key(f"p{i}")) for i in range(50))
    planned = plan_access(settings, peers)
    assert len(set(planned.values())) == 50
    assert all(ipaddress.IPv4Address(a) in ipaddress.IPv4Network("10.211.0.0/17") for a in planned.values())
    assert plan_access(settings, tuple(reversed(peers))) == planned
    fewer = plan_access(settings, peers[::2] + (AccessPeer(name="new", public_key=key("new")),))
    assert all(fewer[p.name] == planned[p.name] for p in peers[::2])
    # A declared address is kept, and a picked one never lands on it.
    pinned = AccessPeer(name="pinned", public_key=key("pinned"), address=planned["p7"])
    moved = plan_access(settings, (*peers, pinned))
    assert moved["pinned"] == planned["p7"] and moved["p7"] != planned["p7"]


def test_a_tiny_range_holds_exactly_its_lower_half() -> None:
    peers = [{"name": f"p{i}", "public_key": key(f"p{i}")} for i in range(3)]
    settings, _ = parse(values(access_enabled="true", access_cidr="10.211.0.0/29", access_peers=peers))
    assert sorted(plan_access(settings, settings.access_peers).values()) == ["10.211.0.1", "10.211.0.2", "10.211.0.3"]
    with pytest.raises(ConfigError, match="4 peers but the lower half"):
        parse(values(access_enabled="true", access_cidr="10.211.0.0/29", access_peers=[*peers, {"name": "p3", "public_key": key("p3")}]))


def test_registry_rows_become_peers_and_a_bad_row_locks_out_no_one_else() -> None:
    rows: list[list[object]] = [
        ["ana", key("ana"), "10.211.0.5", 0],
        ["ci", key("ci"), "10.211.200.9", 1798740000],
        ["bad-key", "nope", "10.211.0.6", 0],
        ["bad-address", key("x"), "10.211.0.300", 0],
        ["bad-expiry", key("y"), "10.211.0.7", "soon"],
    ]
    peers, problems = jitpeers.parse_rows(rows)
    assert set(peers) == {base64.b64decode(key("ana")), base64.b64decode(key("ci"))}
    assert peers[base64.b64decode(key("ci"))].expires_at == 1798740000.0
    assert peers[base64.b64decode(key("ana"))].expires_at is None
    assert [p.split(":")[0] for p in problems] == ["bad-key", "bad-address", "bad-expiry"]
    # A row claiming an address outside the access range (a server's, say) is refused.
    hostile = [["thief", key("thief"), "10.210.1.1", 0], ["ana", key("ana"), "10.211.0.5", 0]]
    peers, problems = jitpeers.parse_rows(hostile, ACCESS)
    assert list(peers) == [base64.b64decode(key("ana"))] and "outside the access range" in problems[0]


def test_a_registry_that_stops_answering_keeps_the_last_list() -> None:
    answers: list[Any] = [[["ana", key("ana"), "10.211.0.5", 0]], OSError("refused"), []]

    def read() -> list[list[object]]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    changes: list[int] = []
    registry = jitpeers.RegistryPeers(read, on_change=lambda: changes.append(len(registry.peers)))
    assert registry.lookup(base64.b64decode(key("ana"))) is None and not registry.loaded.is_set()
    registry.refresh_once()
    assert registry.lookup(base64.b64decode(key("ana"))) is not None
    registry.refresh_once()  # the node restarts: the laptop let in a minute ago stays declared
    assert registry.lookup(base64.b64decode(key("ana"))) is not None
    registry.refresh_once()  # the node answers again, without it: gone
    assert registry.lookup(base64.b64decode(key("ana"))) is None
    # The reaper is woken when the list changed (a revocation acts at once), not on every read.
    assert changes == [1, 0]


def kernel(name: str, allowed: str, handshake: int = 0, rx: int = 0) -> Peer:
    return Peer(public_key=key(name), endpoint=None, allowed_ips=(allowed,), latest_handshake=handshake, rx_bytes=rx, tx_bytes=0, keepalive=None)


def test_which_kernel_peers_leave() -> None:
    declared = {
        base64.b64decode(key("ana")): DaemonPeer(base64.b64decode(key("ana")), "10.211.0.5"),
        base64.b64decode(key("old")): DaemonPeer(base64.b64decode(key("old")), "10.211.0.6", expires_at=500.0),
    }
    activity: dict[str, tuple[int, float]] = {}
    peers = [
        kernel("server1", "10.210.1.0/24"),  # a server: never touched, declared or not
        kernel("ana", "10.211.0.5/32", handshake=990, rx=100),
        kernel("old", "10.211.0.6/32", handshake=990),
        kernel("gone", "10.211.0.9/32", handshake=990),
    ]
    assert jitpeers.leaving(peers, declared, ACCESS, 1000.0, 600, activity) == [(key("old"), "expired"), (key("gone"), "undeclared")]
    # Traffic keeps a peer in: its received bytes move although the last handshake is old.
    later = [kernel("ana", "10.211.0.5/32", handshake=990, rx=5000)]
    assert jitpeers.leaving(later, declared, ACCESS, 1500.0, 600, activity) == []
    assert jitpeers.leaving(later, declared, ACCESS, 2099.0, 600, activity) == []
    assert jitpeers.leaving(later, declared, ACCESS, 2100.0, 600, activity) == [(key("ana"), "idle")]
    # A peer the daemon finds in the kernel after its own restart counts from when it was found.
    fresh: dict[str, tuple[int, float]] = {}
    assert jitpeers.leaving([kernel("ana", "10.211.0.5/32")], declared, ACCESS, 5000.0, 600, fresh) == []
    assert jitpeers.leaving([kernel("ana", "10.211.0.5/32")], declared, ACCESS, 5600.0, 600, fresh) == [(key("ana"), "idle")]


OUTPUTS = {
    "mesh": {
        "servers": {
            "lab1": {"index": 1, "subnet": "10.210.1.0/24", "mesh_address": "10.210.1.1", "dns_address": "10.210.1.1",
                     "public_key": key("lab1"), "endpoint": "198.18.0.11:51820"},
            "lab0": {"index": 0, "subnet": "10.210.0.0/24", "mesh_address": "10.210.0.1", "dns_address": "10.210.0.1",
                     "public_key": key("lab0"), "endpoint": None},
        },  # fmt: skip
        "access": {"cidr": "10.211.0.0/16", "idle_timeout": 600, "peers": {"ana": {"address": "10.211.3.4", "public_key": key("ana"), "expires_at": 0}}},
    }
}


def test_the_printed_wg_quick_file() -> None:
    text = access.wg_quick_config(OUTPUTS, "ana")
    assert f"PrivateKey = {access.PRIVATE_KEY_PLACEHOLDER}\nAddress = 10.211.3.4/32\nDNS = 10.210.1.1\n" in text
    # One [Peer] per server with an endpoint, each reaching its own subnet through it.
    assert text.count("[Peer]") == 1
    assert f"PublicKey = {key('lab1')}\nEndpoint = 198.18.0.11:51820\nAllowedIPs = 10.210.1.0/24\n" in text
    assert "# lab0: no endpoint" in text
    with pytest.raises(ValueError, match="'bob' is not an access peer of the stack \\(declared: ana\\)"):
        access.wg_quick_config(OUTPUTS, "bob")
    with pytest.raises(ValueError, match="the stack has no access peers"):
        access.wg_quick_config({"mesh": {"servers": {}, "access": None}}, "ana")


class FakeRegistry:
    def __init__(self, rows: list[list[Any]]) -> None:
        self.rows, self.executed = rows, list[Any]()

    def query(self, sql: str, params: list[Any] | None = None) -> tuple[list[str], list[list[Any]]]:
        return ["name", "public_key", "address", "expires_at", "origin"], self.rows

    def execute(self, statements: list[Any]) -> list[dict[str, Any]]:
        self.executed += statements
        return []


HOST = HostConfig("lab0", "10.210.0.1", "10.210.0.0/24", "none", "jiji", "127.0.0.1:9220", access_cidr="10.211.0.0/16")


def test_access_add_takes_the_upper_half_and_refuses_clashes() -> None:
    registry = FakeRegistry([["ana", key("ana"), "10.211.3.4", 0, "stack"]])
    added = access.add(registry, HOST, "ci-7", key("ci-7"), access.lifetime("90m"), now=1000.0)  # type: ignore[arg-type]
    assert added["expires_at"] == 1000 + 5400
    assert ipaddress.IPv4Address(added["address"]) in ipaddress.IPv4Network("10.211.128.0/17")
    assert registry.executed[0][1] == ["ci-7", key("ci-7"), added["address"], 6400]
    for name, k, why in (("ana", key("new"), "already an access peer"), ("new", key("ana"), "already access peer 'ana'"),
                         ("Bad_Name", key("x"), "not a lower-case DNS label"), ("ok", "short", "not a WireGuard public key")):  # fmt: skip
        with pytest.raises(ValueError, match=why):
            access.add(registry, HOST, name, k, 60)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="access peers are off"):
        access.add(registry, HostConfig("lab0", "m", "s", "none", "jiji", "api"), "x", key("x"), 60)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="write a number and s, m, h or d"):
        access.lifetime("2 hours")
    with pytest.raises(ValueError, match="declared by the stack"):
        access.remove(registry, "ana")  # type: ignore[arg-type]


def test_a_full_upper_half_is_said_plainly() -> None:
    taken = {f"10.211.0.{i}" for i in range(4, 8)}
    with pytest.raises(ValueError, match="no free address left"):
        access.runtime_address("10.211.0.0/29", "x", taken)
    assert access.runtime_address("10.211.0.0/29", "x", taken - {"10.211.0.6"}) == "10.211.0.6"


def test_the_table_is_read_only_when_its_fingerprint_moves_or_a_minute_passed() -> None:
    reads, prints = [0], [("a", 1)]
    fail = [False]

    def read() -> list[list[object]]:
        reads[0] += 1
        return [["ana", key("ana"), "10.211.0.5", 0]]

    def fingerprint() -> object:
        if fail[0]:
            raise OSError("no clock table")
        return prints[-1]

    registry = jitpeers.RegistryPeers(read, fingerprint=fingerprint)
    registry.refresh_once(now=0.0)
    registry.refresh_once(now=1.0)
    registry.refresh_once(now=2.0)
    assert reads == [1]  # unchanged: not read again
    prints.append(("a", 2))
    registry.refresh_once(now=3.0)
    assert reads == [2]
    registry.refresh_once(now=3.0 + jitpeers.FULL_READ)
    assert reads == [3]  # read whole at least every FULL_READ s
    fail[0] = True
    registry.refresh_once(now=4.0 + jitpeers.FULL_READ)
    registry.refresh_once(now=5.0 + jitpeers.FULL_READ)
    assert reads == [5]  # no fingerprint: read every time, as without one


def test_a_peer_whose_address_was_taken_or_changed_leaves_to_come_back_right() -> None:
    # Another peer's install took ana's address (a clash moved ana's planned address): ana is left
    # with no allowed-ips, or with its old one; either way it leaves, and its next handshake
    # installs it as declared. A peer with no allowed-ips whose key is not declared is not ours.
    declared = {base64.b64decode(key("ana")): DaemonPeer(base64.b64decode(key("ana")), "10.211.0.6")}
    peers = [
        Peer(public_key=key("ana"), endpoint=None, allowed_ips=(), latest_handshake=990, rx_bytes=0, tx_bytes=0, keepalive=None),
        Peer(public_key=key("server"), endpoint=None, allowed_ips=(), latest_handshake=0, rx_bytes=0, tx_bytes=0, keepalive=None),
    ]
    assert jitpeers.leaving(peers, declared, ACCESS, 1000.0, 600, {}) == [(key("ana"), "moved")]
    old = [kernel("ana", "10.211.0.5/32", handshake=990)]
    assert jitpeers.leaving(old, declared, ACCESS, 1000.0, 600, {}) == [(key("ana"), "moved")]


# ---- allow: the ports an access peer may reach beyond DNS and ping -------------------------------


def test_allow_is_checked_in_the_stack_and_never_opens_corrosion() -> None:
    peer = {"name": "ana", "public_key": key("ana"), "allow": ["tcp/22", "udp/5353"]}
    settings, _ = parse(values(access_enabled="true", access_peers=[peer]))
    assert settings.access_peers[0].allow == ("tcp/22", "udp/5353")
    for allow, why in (
        (["tcp/9280"], "opens Corrosion's gossip or API port"),
        (["udp/9220"], "opens Corrosion's gossip or API port"),
        (["tcp/22,tcp/23"], "is not 'tcp/PORT' or 'udp/PORT'"),
        (["ssh"], "is not 'tcp/PORT' or 'udp/PORT'"),
        (["tcp/0"], "is not 'tcp/PORT' or 'udp/PORT'"),
        (["tcp/65536"], "is not 'tcp/PORT' or 'udp/PORT'"),
        (["tcp/22", "tcp/22"], "names an entry twice"),
        ([f"tcp/{p}" for p in range(1000, 1017)], "17 entries; at most 16"),
        ("tcp/22", "is not a list of strings"),
        ([22], "is not a list of strings"),
    ):
        with pytest.raises(ConfigError, match=r"access_peers\[ana\]\.allow: ") as refused:
            parse(values(access_enabled="true", access_peers=[{**peer, "allow": allow}]))
        assert why in str(refused.value), (allow, str(refused.value))


def registry_db() -> Any:
    import sqlite3
    from pathlib import Path

    db = sqlite3.connect(":memory:")
    db.executescript((Path(__file__).parent.parent / "hostbin" / "corrosion-schema.sql").read_text())
    return db


def test_the_registry_step_keeps_allow_as_declared_and_leaves_cli_peers_alone() -> None:
    from jiji_ops import register

    db = registry_db()
    db.execute("INSERT INTO access_peers (name, public_key, address, origin) VALUES ('ci', 'k', '10.211.200.1', 'cli')")
    db.execute("INSERT INTO access_allow (name, allow) VALUES ('ci', 'tcp/8080')")
    servers = [{"id": "a", "hostname": "h", "subnet": "10.210.0.0/24", "wireguard_ip": "10.210.0.1",
                "wireguard_pubkey": key("a"), "endpoints": []}]  # fmt: skip

    def sync(peers: list[dict[str, Any]] | None) -> dict[str, str]:
        for sql, params in register.statements({"servers": servers, "metadata": {}, "access_peers": peers}):
            db.execute(sql, params)
        return dict(db.execute("SELECT name, allow FROM access_allow").fetchall())

    ana = {"name": "ana", "public_key": key("ana"), "address": "10.211.0.9", "expires_at": 0}
    assert sync([{**ana, "allow": ["tcp/22", "udp/5353"]}]) == {"ana": "tcp/22,udp/5353", "ci": "tcp/8080"}
    assert sync([{**ana, "allow": ["tcp/2222"]}]) == {"ana": "tcp/2222", "ci": "tcp/8080"}
    assert sync([{**ana, "allow": []}]) == {"ci": "tcp/8080"}
    assert sync([{**ana, "allow": ["tcp/22"]}]) == {"ana": "tcp/22", "ci": "tcp/8080"}
    assert sync([]) == {"ci": "tcp/8080"}  # ana left the stack: its allow went with it
    assert sync(None) == {}  # the feature off: every access peer and allow goes


def test_the_daemon_reads_allow_and_a_broken_one_closes_never_locks_out() -> None:
    rows = [
        ["ana", key("ana"), "10.211.0.9", 0, "tcp/22,udp/5353"],
        ["bob", key("bob"), "10.211.0.10", 0, "tcp/22;rm -rf /"],
        ["old", key("old"), "10.211.0.11", 0],  # a row read before the table existed
    ]
    peers, problems = jitpeers.parse_rows(rows, ACCESS)
    by_name = {p.address: p.allow for p in peers.values()}
    assert by_name == {"10.211.0.9": (("tcp", 22), ("udp", 5353)), "10.211.0.10": (), "10.211.0.11": ()}
    assert len(problems) == 1 and problems[0].startswith("bob: allow")


def test_the_rules_open_only_allowed_ports_of_present_peers_and_never_corrosion() -> None:
    from jiji_ops.accessrules import present_peers, wanted_rules

    ana = DaemonPeer(base64.b64decode(key("ana")), "10.211.0.9", allow=(("tcp", 22), ("tcp", 9280)))
    bob = DaemonPeer(base64.b64decode(key("bob")), "10.211.0.10", allow=(("udp", 5353),))
    cy = DaemonPeer(base64.b64decode(key("cy")), "10.211.0.11", allow=(("tcp", 22),))
    kernel = {ana.public_key: {"10.211.0.9/32"}, bob.public_key: {"10.211.0.99/32"}}  # bob's address was taken
    present = present_peers(kernel, {p.public_key: p for p in (ana, bob, cy)})
    assert present == [ana]
    assert wanted_rules(present + [bob], "10.210.0.1", {9280, 9220}) == [
        "-A JIJI-ACCESS -s 10.211.0.9/32 -d 10.210.0.1/32 -p tcp -m tcp --dport 22 -j ACCEPT",
        "-A JIJI-ACCESS -s 10.211.0.10/32 -d 10.210.0.1/32 -p udp -m udp --dport 5353 -j ACCEPT",
    ]


def test_the_chain_is_replaced_whole_and_only_when_it_differs(tmp_path: Any, monkeypatch: Any) -> None:
    """With stand-in iptables and iptables-restore: the chain as shown, and what restore received."""
    from jiji_ops.accessrules import AccessRules

    shown = tmp_path / "shown"
    shown.write_text("-N JIJI-ACCESS\n")
    (tmp_path / "iptables").write_text(f"#!/bin/sh\ncat {shown}\n")
    (tmp_path / "iptables-restore").write_text(
        f"#!/bin/sh\ncat > {tmp_path}/restored\n{{ echo '-N JIJI-ACCESS'; grep '^-A' {tmp_path}/restored || true; }} > {shown}\n"
    )
    for tool in ("iptables", "iptables-restore"):
        (tmp_path / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    rules = AccessRules("10.210.0.1", {9280})
    ana = DaemonPeer(base64.b64decode(key("ana")), "10.211.0.9", allow=(("tcp", 22),))
    assert rules.sync([ana]) == 1
    restored = (tmp_path / "restored").read_text()
    assert restored.startswith("*filter\n:JIJI-ACCESS - [0:0]\n-A JIJI-ACCESS -s 10.211.0.9/32") and restored.endswith("COMMIT\n")
    (tmp_path / "restored").unlink()
    assert rules.sync([ana]) is None and not (tmp_path / "restored").exists()  # as wanted: nothing written
    assert rules.sync([]) == 0 and (tmp_path / "restored").read_text() == "*filter\n:JIJI-ACCESS - [0:0]\nCOMMIT\n"


def test_access_add_writes_allow_and_refuses_corrosions_ports() -> None:
    registry = FakeRegistry([])
    added = access.add(registry, HOST, "ci-8", key("ci-8"), 60, allow=["tcp/22"])  # type: ignore[arg-type]
    assert added["allow"] == "tcp/22"
    assert registry.executed[-1] == ("INSERT INTO access_allow (name, allow) VALUES (?, ?)", ["ci-8", "tcp/22"])
    for bad, why in ((["tcp/9220"], "Corrosion's port"), (["tcp/9280"], "Corrosion's port"), (["ssh"], "not 'tcp/PORT'")):
        with pytest.raises(ValueError, match=why):
            access.add(registry, HOST, "ci-9", key("ci-9"), 60, allow=bad)  # type: ignore[arg-type]
