"""The program on four lab hosts, through the real Pulumi engine (tests/engines.py; each test
prints which CLI and provider ran). Everything on the
hosts is real: sshd, systemd, wireguard-go, klukai, jiji-dns, dig.

One test walks a stack through what operators do to it: a cold up, a no-op, rotating the SSH
key, adding a server, losing one for good, `--replace`, renaming a server, destroy. The others
check the operator commands, the engine steps, the host checks and a failed up.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jiji_common import layout

from jiji_net import render, steps, zipapps
from jiji_net.model import MeshSettings, Server
from jiji_net.plan import plan_addresses
from tests.conftest import FIRST_PACKET_WAIT, Lab, module_lab
from tests.engines import CommandFailed, RealEngine, make_engine
from tests.harness import REPO, corrosion_binary, wait_until

pytestmark = pytest.mark.corrosion

KEY = REPO / ".lab" / "lab" / "id_ed25519"
MESH = {i: f"10.210.{i}.1" for i in range(4)}
CORROSION = "/usr/local/lib/jiji-net/corrosion -c /etc/jiji/corrosion/config.toml"
# A row written on one server reaches another's DNS answers by broadcast at once; when a
# broadcast is lost, Corrosion's periodic sync (at most every 2 s here: [perf] max_sync_backoff)
# brings it, and klukai batches subscription changes for up to 600 ms. Two sync rounds, the
# batch and a dig's own 1 s timeout fit well within this many seconds.
REPLICATED = 10
UNITS = ("jiji-net-network", "wg-quick@jiji0", "jiji-corrosion", "jiji-dns")

# What "as it was found" means on a host: everything the program could have touched.
SNAPSHOT = r"""
find /etc /usr/local /var/lib -xdev \( -path /var/lib/systemd -o -path /var/lib/dpkg -o -path /etc/ssh \) -prune \
    -o -print | sort
echo --; ip -o link | awk '{print $2}' | grep -v '^eth0@' ; ip -o addr | awk '$4 !~ /^fe80:/ {print $2, $4}'
echo --; iptables -S; iptables -t nat -S
echo --; cat /proc/sys/net/ipv4/ip_forward
echo --; systemctl list-units --all --no-legend --plain 'jiji*' 'wg-quick*' | awk '$3 != "inactive" {print $1, $3}'
"""


@pytest.fixture(scope="module")
def lab4() -> Iterator[Lab]:
    corrosion_binary()  # fails with the build command when the binary is missing
    yield from module_lab(4)


def host_keys(lab: Lab, n: int) -> dict[str, str]:
    """Each lab host's ed25519 host key, pinned in the stack as the program requires."""
    scan = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", *(lab.ip(i) for i in range(n))], capture_output=True, text=True, timeout=30
    ).stdout
    keys = {line.split()[0]: " ".join(line.split()[1:3]) for line in scan.splitlines() if not line.startswith("#")}
    return {f"lab{i}": keys[lab.ip(i)] for i in range(n)}


def config(lab: Lab, n: int, key: str | None = None, **changes: Any) -> dict[str, Any]:
    pinned = host_keys(lab, n)
    servers = [
        {"name": f"lab{i}", "host": lab.ip(i), "index": i, "endpoint": lab.ip(i), "host_key": pinned[f"lab{i}"]}
        for i in range(n)
    ]
    return {
        "servers": servers,
        "ssh_private_key": key or KEY.read_text(),
        "container_engine": "none",
        "corrosion_local_path": str(corrosion_binary()),
        **changes,
    }


def write(lab: Lab, i: int, statements: list[Any]) -> None:
    body = json.dumps(statements)
    lab.run(
        i,
        "python3 -c 'import sys, urllib.request; urllib.request.urlopen(urllib.request.Request("
        '"http://127.0.0.1:9220/v1/transactions", data=sys.stdin.buffer.read(),'
        ' headers={"content-type": "application/json"})).read()\'',
        stdin=body,
    )


def dig(lab: Lab, i: int, server: str, name: str) -> list[str]:
    return sorted(lab.run(i, f"dig +short +time=1 +tries=1 @{server} {name}", check=False).split())


def container(lab: Lab, i: int, address: str) -> None:
    """A network namespace on the server's bridge stands in for a container."""
    lab.run(
        i,
        f"ip netns add ct && ip link add cth type veth peer name eth0 netns ct && ip link set cth master jiji-br0 up"
        f" && ip -n ct addr add {address}/24 dev eth0 && ip -n ct link set eth0 up && ip -n ct link set lo up"
        f" && ip -n ct route add default via {MESH[i]}",
    )


def remove_container(lab: Lab, i: int) -> None:
    lab.run(i, "ip netns del ct 2>/dev/null; ip link del cth 2>/dev/null; true", check=False)


def unit_starts(lab: Lab, i: int) -> dict[str, str]:
    """When each of our units last entered `active`: a restart changes it."""
    out = lab.run(i, "systemctl show -p Id -p ActiveEnterTimestampMonotonic " + " ".join(UNITS))
    blocks = [
        dict(line.split("=", 1) for line in block.splitlines() if "=" in line) for block in out.strip().split("\n\n")
    ]
    return {b["Id"]: b["ActiveEnterTimestampMonotonic"] for b in blocks}


def firewall_packets(lab: Lab, i: int) -> int:
    """Packets counted by the first rule of our INPUT chain (established flows): a flush and
    refill of the chain resets it."""
    line = lab.run(i, "iptables -w -v -x -n -L JIJI-INPUT | awk '$0 ~ /ESTABLISHED/ {print $1; exit}'").strip()
    return int(line or 0)


def assert_unchanged(before: str, after: str, what: str) -> None:
    diff = "\n".join(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0))
    assert not diff, f"{what} is not as it was found:\n{diff}"


def names(actions: list[tuple[str, str]], *ops: str) -> set[str]:
    return {n for op, n in actions if op in ops}


def ready(lab: Lab, i: int) -> str:
    return lab.run(i, "jiji-net ready; echo exit=$?", check=False)


def test_a_stack_through_what_operators_do_to_it(lab4: Lab, tmp_path: Path) -> None:
    lab = lab4
    before = {i: lab.run(i, SNAPSHOT) for i in range(4)}
    engine = make_engine("lab-lifecycle")
    timings: dict[str, float] = {}
    try:
        # Cold up of three servers.
        first = engine.up(config(lab, 3))
        timings["cold up, 3 servers"] = first.seconds
        keys = {f"lab{i}": first.outputs["servers"][f"lab{i}"]["public_key"] for i in range(3)}
        assert all(len(k) == 44 and k.endswith("=") for k in keys.values())
        for i in range(3):
            for j in range(3):
                if i != j:
                    assert lab.pings(i, MESH[j], wait=FIRST_PACKET_WAIT), f"lab{i} cannot ping lab{j} over jiji0"
            seen = lab.handshakes(i)
            assert set(seen) == {keys[f"lab{j}"] for j in range(3) if j != i} and all(seen.values()), seen
            assert "PrivateKey" not in lab.run(i, "cat /etc/wireguard/jiji0.conf")
            assert lab.run(i, "stat -c %a /etc/wireguard/jiji0.key").strip() == "600"
            assert "exit=0" in ready(lab, i), ready(lab, i)
            members = lab.run(i, f"{CORROSION} cluster members")
            assert {a for a in MESH.values() if f'"{a}:9280"' in members} == {MESH[j] for j in range(3) if j != i}, (
                members
            )
        rows = lab.run(1, f"{CORROSION} query 'SELECT id, wireguard_pubkey FROM servers ORDER BY id'").split()
        assert rows == [f"lab{i}|{keys[f'lab{i}']}" for i in range(3)]
        if isinstance(engine, RealEngine):
            state = engine.state()
            for i in range(3):
                private = lab.run(i, "cat /etc/wireguard/jiji0.key").strip()
                assert private not in state and private not in first.log
            assert "Unable to set" not in first.log, first.log

        # Service discovery, forwarding, and where DNS is not answered.
        write(lab, 0, [
            ["INSERT INTO services (project, name) VALUES (?, ?)", ["shop", "web"]],
            ["INSERT INTO containers (id, service, project, server_id, ip, health_status, started_at)"
             " VALUES (?, ?, ?, ?, ?, ?, ?)", ["c0", "web", "shop", "lab0", "10.210.0.2", "healthy", 1]],
        ])  # fmt: skip
        wait_until(lambda: dig(lab, 1, MESH[1], "shop-web.jiji") == ["10.210.0.2"], REPLICATED, "lab1 answers shop-web.jiji")
        assert dig(lab, 2, MESH[2], "www.lab.test") == ["198.18.0.200"]
        assert "connection refused" in lab.run(1, "dig +time=1 +tries=1 @198.18.0.11 www.lab.test", check=False)
        outside = ["ip", "netns", "exec", "jiji-lab-dns"]
        subprocess.run([*outside, "ip", "route", "replace", "10.210.0.1/32", "via", lab.ip(0)], check=True)
        try:
            ssh_port = subprocess.run(
                [*outside, sys.executable, "-c", "import socket; socket.create_connection(('10.210.0.1', 22), 3)"],
                capture_output=True,
            )
            assert ssh_port.returncode == 0, "routing to lab0's mesh address from the underlay"
            probe = subprocess.run([*outside, "dig", "+time=1", "+tries=1", "@10.210.0.1", "www.lab.test"],
                                   capture_output=True, text=True)  # fmt: skip
            assert "timed out" in probe.stdout, probe.stdout
        finally:
            subprocess.run([*outside, "ip", "route", "del", "10.210.0.1/32"], check=False)

        # Containers on lab0 and lab2 reach each other with their own addresses, use DNS, and
        # cannot touch the hosts' own services: no sshd, and no joining the registry's gossip.
        container(lab, 0, "10.210.0.2")
        container(lab, 2, "10.210.2.2")
        lab.run(2, "ip netns exec ct timeout 10 python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
                   ' s.bind(("0.0.0.0", 7000)); print(s.recvfrom(64)[1][0])\' > /tmp/peer 2>&1 &')  # fmt: skip
        assert lab.pings(0, "10.210.2.2", netns="ct")
        lab.run(0, "ip netns exec ct python3 -c 'import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
                   ' [s.sendto(b"x", ("10.210.2.2", 7000)) or time.sleep(0.2) for _ in range(5)]\'')  # fmt: skip
        assert lab.run(2, "cat /tmp/peer").strip() == "10.210.0.2"
        assert (
            lab.run(0, "ip netns exec ct dig +short +time=1 +tries=1 @10.210.0.1 api.lab.test").strip()
            == "198.18.0.201"
        )
        for target in ("10.210.0.1", "10.210.1.1"):
            blocked = lab.run(0, f"ip netns exec ct timeout 5 python3 -c 'import socket; socket.create_connection((\"{target}\", 22), 2)'"
                                 " 2>&1; echo exit=$?", check=False)  # fmt: skip
            assert "exit=0" not in blocked, f"a container reached sshd on {target}"
        evil = (
            '[db]\npath = "/tmp/evil/state.db"\nschema_paths = ["/etc/jiji/corrosion/schemas"]\n'
            '[gossip]\naddr = "10.210.0.2:9280"\nbootstrap = ["10.210.1.1:9280"]\nplaintext = true\n'
            '[api]\naddr = "127.0.0.1:9299"\n[admin]\npath = "/tmp/evil/admin.sock"\n'
        )
        lab.run(0, "mkdir -p /tmp/evil && cat > /tmp/evil/config.toml", stdin=evil)
        lab.run(0, "ip netns exec ct timeout 15 /usr/local/lib/jiji-net/corrosion agent -c /tmp/evil/config.toml"
                   " >/tmp/evil/log 2>&1; true", check=False)  # fmt: skip
        assert "10.210.0.2" not in lab.run(1, f"{CORROSION} cluster members"), (
            "a container joined the registry's gossip"
        )
        lab.run(0, "rm -rf /tmp/evil")

        # A second up changes nothing.
        noop = engine.up(config(lab, 3))
        assert noop.actions == [], noop.actions
        timings["no-op up"] = noop.seconds

        # A new SSH key: every resource's connection changes, no unit restarts, no firewall flush.
        new_key = tmp_path / "rotated"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(new_key)], check=True)
        for i in range(3):
            lab.run(i, "cat >> /root/.ssh/authorized_keys", stdin=Path(f"{new_key}.pub").read_text())
        starts = {i: unit_starts(lab, i) for i in range(3)}
        counted = {i: firewall_packets(lab, i) for i in range(3)}
        shakes = {i: lab.handshakes(i) for i in range(3)}
        rotated = engine.up(config(lab, 3, key=new_key.read_text()))
        timings["SSH key rotated"] = rotated.seconds
        assert names(rotated.actions, "update") == names(first.actions, "create"), rotated.actions
        for i in range(3):
            assert unit_starts(lab, i) == starts[i], f"lab{i}: a unit restarted"
            assert firewall_packets(lab, i) >= counted[i] > 0, f"lab{i}: the firewall was refilled"
            assert all(lab.handshakes(i)[k] >= v > 0 for k, v in shakes[i].items())
        cfg3 = config(lab, 3, key=new_key.read_text())

        # A fourth server: the others get the new table (live peers), Corrosion and DNS untouched.
        ifindex = lab.run(0, "ip -o link show jiji0 | cut -d: -f1")
        starts0 = unit_starts(lab, 0)
        for_four = config(lab, 4, key=new_key.read_text())
        lab.run(3, "cat >> /root/.ssh/authorized_keys", stdin=Path(f"{new_key}.pub").read_text())
        # Every command line on lab0, sampled while its steps run and its peers change: never the key.
        lab.run(0, "nohup timeout 40 sh -c 'while :; do cat /proc/[0-9]*/cmdline 2>/dev/null | tr \"\\\\0\" \" \";"
                   " echo; done' > /tmp/cmdlines 2>/dev/null &")  # fmt: skip
        four = engine.up(for_four)
        timings["adding a 4th server"] = four.seconds
        assert names(four.actions, "update") == {
            f"lab{i}-{s}" for i in range(3) for s in ("wireguard", "mesh-upload")
        } | {"jiji-registry"}, four.actions
        assert not names(four.actions, "delete", "replace", "delete-replaced")
        assert lab.run(0, "ip -o link show jiji0 | cut -d: -f1") == ifindex, "jiji0 was recreated"
        assert unit_starts(lab, 0) == starts0
        lab.run(0, "pkill -f 'while :; do cat /proc'; true", check=False)
        private0 = lab.run(0, "cat /etc/wireguard/jiji0.key").strip()
        sampled = lab.run(0, "cat /tmp/cmdlines; rm -f /tmp/cmdlines")
        assert "sh -s -- apply" in sampled, "the sampler did not run while the steps ran"
        assert private0 not in sampled, "the private key was on a command line"
        if isinstance(engine, RealEngine):
            print(f"\nstate file, 4 servers: {len(engine.state())} bytes")
        for i in range(3):
            assert four.outputs["servers"][f"lab{i}"] == first.outputs["servers"][f"lab{i}"]
            wait_until(lambda i=i: lab.pings(3, MESH[i]) and lab.pings(i, MESH[3]), 15, f"lab3 <-> lab{i}")
        wait_until(lambda: "10.210.3.1:9280" in lab.run(0, f"{CORROSION} cluster members"), 15, "lab3 joins Corrosion")

        # lab3 dies for good. Marked gone, the others forget it without dialing it; then it is
        # dropped from the stack without a delete.
        subprocess.run(["bash", str(lab.script), "stop", "3"], check=True, capture_output=True)
        for_four["servers"][3]["gone"] = True
        gone = engine.up(for_four)
        timings["a gone server forgotten"] = gone.seconds
        assert not names(gone.actions, "create") and not any(
            n.startswith("lab3-") for n in names(gone.actions, "update")
        )
        assert MESH[3] not in lab.run(0, "wg show jiji0 allowed-ips")
        assert lab.run(2, f"{CORROSION} query \"SELECT count(*) FROM servers WHERE id = 'lab3'\"").strip() == "0"
        assert "lab3" not in gone.outputs["servers"]
        dropped = engine.up(cfg3)
        timings["the gone server dropped"] = dropped.seconds
        assert {n for _, n in dropped.actions} == {n for n in names(four.actions, "create") if n.startswith("lab3-")}
        assert engine.up(cfg3).actions == []
        subprocess.run(["bash", str(lab.script), "reset", "3"], check=True, capture_output=True, timeout=300)

        # --replace of a step: removed first, applied again; lab1 stays on the mesh.
        replaced = engine.up(cfg3, replace=["lab1-wireguard"])
        assert "lab1-wireguard" in {n for _, n in replaced.actions}
        wait_until(lambda: lab.pings(0, MESH[1]) and lab.pings(1, MESH[2]), 15, "lab1 back on the mesh")
        assert "exit=0" in ready(lab, 1), ready(lab, 1)
        assert engine.up(cfg3).actions == []
        # --replace of the host step gives lab1 a new key; its peers take it, live.
        rekeyed = engine.up(cfg3, replace=["lab1-host"])
        new_lab1 = rekeyed.outputs["servers"]["lab1"]["public_key"]
        assert new_lab1 != keys["lab1"]
        wait_until(lambda: lab.pings(0, MESH[1]) and lab.pings(1, MESH[2]), 15, "lab1 with its new key")
        assert "exit=0" in ready(lab, 1), ready(lab, 1)
        assert engine.up(cfg3).actions == []

        # Renaming a server (same index): new resource names take over; the old deletes do nothing.
        renamed_cfg = json.loads(json.dumps(cfg3))
        renamed_cfg["servers"][2]["name"] = "lab9"
        data_before = lab.run(2, "ls /var/lib/jiji/corrosion")
        renamed = engine.up(renamed_cfg)
        timings["renaming a server"] = renamed.seconds
        assert renamed.outputs["servers"]["lab9"]["public_key"] == keys["lab2"], "the renamed server kept its key"
        assert lab.run(2, "ls /var/lib/jiji/corrosion") == data_before
        for i in range(3):
            assert "exit=0" in ready(lab, i), (i, ready(lab, i))
        wait_until(lambda: lab.run(0, f"{CORROSION} query 'SELECT id FROM servers ORDER BY id'").split() == ["lab0", "lab1", "lab9"],
                   10, "the registry has the new name")  # fmt: skip
        assert engine.up(renamed_cfg).actions == []
        print("\n" + "\n".join(f"{what}: {seconds:.1f} s" for what, seconds in timings.items()))
    finally:
        for i in range(3):
            remove_container(lab, i)
        print(f"destroy: {engine.destroy().seconds:.1f} s")
        engine.close()
    for i in range(3):
        assert_unchanged(before[i], lab.run(i, SNAPSHOT), f"lab{i} after destroy")
    assert_unchanged(before[3], lab.run(3, SNAPSHOT), "lab3 after its reset")


def stack_with_outputs(workdir: Path, outputs: dict[str, Any]) -> dict[str, str]:
    """A local-backend stack `lab` whose outputs are `outputs`, made by the real engine through
    the Automation API (an inline program needs no language host), and the environment that
    lets `pulumi stack output` find it."""
    import pulumi
    from pulumi import automation

    from deploy import toolchain

    root = toolchain.pulumi_root()
    env = {
        **toolchain.cli_env(workdir / "pulumi-home", f"file://{workdir / 'state'}"),
        "PATH": f"{root / 'bin'}:{os.environ['PATH']}",
        "PULUMI_CONFIG_PASSPHRASE": "",
    }
    (workdir / "state").mkdir()

    def program() -> None:
        for name, value in outputs.items():
            pulumi.export(name, value)

    stack = automation.create_or_select_stack(
        stack_name="lab",
        project_name="jiji-net",
        program=program,
        opts=automation.LocalWorkspaceOptions(
            env_vars=env,
            pulumi_home=env["PULUMI_HOME"],
            pulumi_command=automation.PulumiCommand(root=str(root), skip_version_check=True),
        ),
    )
    assert stack.up(on_output=lambda _: None).summary.result == "succeeded"
    return env


def test_operator_commands_tell_the_truth(lab4: Lab, tmp_path: Path) -> None:
    lab = lab4
    before = {i: lab.run(i, SNAPSHOT) for i in range(3)}
    engine = make_engine("lab-operator")
    try:
        result = engine.up(config(lab, 3))
        outputs = tmp_path / "outputs.json"
        outputs.write_text(json.dumps(result.outputs))
        tool = REPO / "build" / "jiji-net.pyz"

        def ops(*args: str, where: tuple[str, ...] = ("--outputs", str(outputs))) -> subprocess.CompletedProcess[str]:
            # Host keys are checked against the ones pinned in the stack's outputs.
            argv = [sys.executable, str(tool), *where, "-i", str(KEY), *args]
            return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=pulumi_env)

        # The same outputs in a real stack, read back by the real CLI (`pulumi stack output`).
        pulumi_env = stack_with_outputs(tmp_path, result.outputs)
        via_cli = ops("-H", "all", "ready", where=("--stack", "organization/jiji-net/lab"))
        assert via_cli.returncode == 0 and via_cli.stdout.count("ok   corrosion: active, 2 other members") == 3, (
            via_cli.stdout + via_cli.stderr
        )

        # status: true peers, members and DNS state on every server.
        out = ops("-H", "all", "--json", "status")
        assert out.returncode == 0, out.stdout + out.stderr
        report = json.loads(out.stdout)
        assert sorted(report) == ["lab0", "lab1", "lab2"]
        for i in range(3):
            st = report[f"lab{i}"]["output"]
            assert sorted(p["server"] for p in st["wireguard"]["peers"]) == [f"lab{j}" for j in range(3) if j != i]
            assert not any(p["stale"] for p in st["wireguard"]["peers"])
            assert sorted(m["addr"] for m in st["corrosion"]["members"]) == [
                f"{MESH[j]}:9280" for j in range(3) if j != i
            ]
            assert st["dns"]["subscription_state"] == "live" and st["dns"]["unit"] == "active"
        text = ops("-H", "lab2", "status").stdout
        assert text.startswith("== lab2 (198.18.0.12)") and "lab0  198.18.0.10:51820  10.210.0.0/24" in text

        # Rows: two live containers (namespaces on lab0, the older one hidden), one whose
        # container does not exist, one of a server that is gone.
        lab.run(0, "ip netns add c-live && ip netns add c-old")
        containers = [
            ("c-old", "lab0", "10.210.0.3", 1),
            ("c-live", "lab0", "10.210.0.2", 2),
            ("ghost", "lab0", "10.210.0.9", 3),
            ("orphan", "gone", "10.210.7.2", 1),
        ]
        write(
            lab,
            0,
            [["INSERT INTO services (project, name) VALUES (?, ?)", ["shop", "web"]]]
            + [
                [
                    "INSERT INTO containers (id, service, project, server_id, ip, health_status, started_at)"
                    " VALUES (?, 'web', 'shop', ?, ?, 'healthy', ?)",
                    list(c),
                ]
                for c in containers
            ],
        )
        wait_until(lambda: dig(lab, 1, MESH[1], "shop-web.jiji") == ["10.210.0.9", "10.210.7.2"], REPLICATED, "rows replicated")
        out = ops("-H", "lab1", "--json", "dns", "--service", "web")
        entry = json.loads(out.stdout)["lab1"]["output"][0]
        assert entry["name"] == "shop-web.jiji" and entry["answers"] == ["10.210.0.9", "10.210.7.2"]
        why = {r["id"]: r["why"] for r in entry["rows"]}
        assert why["c-old"] == "hidden: ghost on lab0 started later (newest wins per server)"

        # gc: dry run first, then --force; only the two dead rows go.
        dry = ops("-H", "lab0", "gc")
        assert "would delete (dry run; --force deletes): ghost" in dry.stdout and "orphan" in dry.stdout
        count = "SELECT count(*) AS n FROM containers"
        assert json.loads(ops("-H", "lab0", "--json", "db", "query", count).stdout)["lab0"]["output"] == [{"n": 4}]
        forced = ops("-H", "lab0", "gc", "--force")
        assert forced.returncode == 0 and "deleted: ghost" in forced.stdout and "deleted: orphan" in forced.stdout
        left = json.loads(ops("-H", "lab0", "--json", "db", "query", "SELECT id FROM containers ORDER BY id").stdout)
        assert left["lab0"]["output"] == [{"id": "c-live"}, {"id": "c-old"}]
        wait_until(lambda: dig(lab, 2, MESH[2], "shop-web.jiji") == ["10.210.0.2"], REPLICATED, "gc reaches DNS")

        # db query refuses writes, before they reach Corrosion.
        refused = ops("-H", "lab0", "db", "query", "INSERT INTO servers (id) VALUES ('x')")
        assert refused.returncode == 2 and "refused: INSERT changes the registry" in refused.stdout

        inspected = json.loads(ops("-H", "lab0", "--json", "inspect", "--container", "c-li").stdout)["lab0"]["output"]
        assert [(r["id"], r["in_server_subnet"], r["exists_here"]) for r in inspected] == [("c-live", True, True)]
        stats = json.loads(ops("-H", "lab0", "--json", "db", "stats").stdout)["lab0"]["output"]
        assert stats["tables"] == {"access_peers": 0, "cluster_metadata": 3, "containers": 2, "servers": 3, "services": 1}

        # Corrosion stopped on lab1: status and ready say so there, and ready fails.
        lab.run(1, "systemctl stop jiji-corrosion")
        ready = ops("-H", "all", "ready")
        assert ready.returncode == 1, ready.stdout
        lab1_part = ready.stdout.split("== lab1")[1].split("== lab2")[0]
        assert "exit 1" in lab1_part.splitlines()[0]
        assert "FAIL corrosion: jiji-corrosion.service is inactive" in lab1_part
        assert "FAIL dns: answers from its last snapshot" in lab1_part and "ok   wireguard" in lab1_part
        st1 = json.loads(ops("-H", "lab1", "--json", "status").stdout)["lab1"]["output"]
        assert st1["corrosion"]["unit"] == "inactive" and "unreachable" in st1["corrosion"]["api_error"]
        lab.run(1, "systemctl start jiji-corrosion")
        wait_until(lambda: ops("-H", "all", "ready").returncode == 0, 30, "every server ready again")
    finally:
        lab.run(0, "ip netns del c-live 2>/dev/null; ip netns del c-old 2>/dev/null; true")
        engine.destroy()
        engine.close()
    for i in range(3):
        assert_unchanged(before[i], lab.run(i, SNAPSHOT), f"lab{i} after destroy")


def fake_engine_cli(cli: str, inspect: str) -> str:
    """Stands in for the docker or podman CLI: remembers the jiji network, records every call.
    As podman it is a podman that has --interface-name; the lab's real podman 4.3
    cannot, and tests/test_containers_on_lab.py covers that path."""
    return f"""#!/bin/sh
echo "$*" >> /tmp/{cli}-calls
case "$1 $2" in
    "network exists") [ -e /tmp/{cli}-net ] ;;
    "network inspect") [ -e /tmp/{cli}-net ] && {{ [ -z "${{4:-}}" ] || cat /tmp/{cli}-net; }} ;;
    "network create") if [ "${{3:-}}" = --help ]; then echo '      --interface-name string'; else echo '{inspect}' > /tmp/{cli}-net; fi ;;
    "network rm") rm -f /tmp/{cli}-net ;;
esac
"""


FAKE_DOCKER_UNIT = """[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'echo start >> /tmp/docker-starts'
"""


HELPER = zipapps.build("step")
HELPER_SHA256 = hashlib.sha256(HELPER).hexdigest()
STEPLIB = render.step_library(steps.helper_path(HELPER_SHA256), HELPER_SHA256)
STEPLIB_SHA256 = hashlib.sha256(STEPLIB.encode()).hexdigest()


def network_step(engine: str) -> steps.Step:
    settings = MeshSettings(container_engine=engine)
    server = Server(name="lab3", host="198.18.0.13", index=3, endpoint="198.18.0.13")
    return steps.network_step("lab3-network", STEPLIB_SHA256, settings, plan_addresses(settings, [server])["lab3"])


def run_step(lab: Lab, i: int, step: steps.Step, action: str = "apply") -> str:
    """Runs `step` as its resource would, after the uploads of the step library and its helper."""
    path = steps.library_path(STEPLIB_SHA256)
    lab.run(i, f"mkdir -p {layout.STAGING} && cat > {path}", stdin=STEPLIB)
    lab.run(i, f"cat > {steps.helper_path(HELPER_SHA256)}", stdin=HELPER)
    return lab.run(i, f"sh -s -- {action}", stdin=step.script)


def test_docker_daemon_json_is_merged_and_put_back_exactly(lab4: Lab) -> None:
    """The network step against a recording stand-in for the docker CLI (the lab has no docker):
    daemon.json keeps the operator's keys, dockerd restarts only when `dns` changes, a network
    with another subnet is refused, and remove puts the file back byte for byte."""
    lab = lab4
    step = network_step("docker")
    daemon = '{"log-driver": "journald", "dns": ["192.0.2.53"],\n "features": {"buildkit": true}}\n'
    try:
        lab.run(3, "cat > /usr/local/bin/docker && chmod 755 /usr/local/bin/docker",
                stdin=fake_engine_cli("docker", "10.210.3.0/24 10.210.3.1 1420"))  # fmt: skip
        lab.run(3, "cat > /etc/systemd/system/docker.service && systemctl daemon-reload", stdin=FAKE_DOCKER_UNIT)
        lab.run(3, "mkdir -p /etc/docker && cat > /etc/docker/daemon.json", stdin=daemon)
        run_step(lab, 3, step)
        merged = json.loads(lab.run(3, "cat /etc/docker/daemon.json"))
        assert merged == {**json.loads(daemon), "dns": ["10.210.3.1"]}
        calls = lab.run(3, "cat /tmp/docker-calls")
        assert "network create --driver bridge --subnet 10.210.3.0/24 --gateway 10.210.3.1" in calls
        assert "com.docker.network.bridge.trusted_host_interfaces=jiji0" in calls
        run_step(lab, 3, step)  # again: nothing to change, no second network, no restart
        assert lab.run(3, "grep -c 'network create' /tmp/docker-calls").strip() == "1"
        assert lab.run(3, "wc -l < /tmp/docker-starts").strip() == "1"
        run_step(lab, 3, step, "remove")
        assert lab.run(3, "cat /etc/docker/daemon.json") == daemon
        assert "network rm jiji" in lab.run(3, "cat /tmp/docker-calls")
        # No daemon.json before: none after.
        lab.run(3, "rm /etc/docker/daemon.json")
        run_step(lab, 3, step)
        run_step(lab, 3, step, "remove")
        assert lab.run(3, "ls /etc/docker").strip() == ""
        # A jiji network with another subnet is refused, with what to do.
        lab.run(3, "echo '10.99.0.0/24 10.99.0.1 1420' > /tmp/docker-net")
        with pytest.raises(
            RuntimeError, match="docker network jiji has subnet/gateway/mtu '10.99.0.0/24 10.99.0.1 1420'"
        ):
            run_step(lab, 3, step)
        run_step(lab, 3, step, "remove")
        # A broken daemon.json stops the step with a message, and is left as it was.
        lab.run(3, "echo '{broken' > /etc/docker/daemon.json")
        with pytest.raises(RuntimeError, match="daemon.json is not valid JSON"):
            run_step(lab, 3, step)
        assert lab.run(3, "cat /etc/docker/daemon.json").strip() == "{broken"
        run_step(lab, 3, step, "remove")
    finally:
        lab.run(3, "rm -rf /usr/local/bin/docker /etc/systemd/system/docker.service /etc/docker /var/lib/jiji-net"
                   " /usr/local/lib/jiji-net /tmp/docker-*; systemctl daemon-reload", check=False)  # fmt: skip


def test_podman_gets_a_drop_in_and_keeps_containers_conf(lab4: Lab) -> None:
    lab = lab4
    step = network_step("podman")
    own = '[containers]\nlog_driver = "journald"\n'
    try:
        lab.run(3, "cat > /usr/local/bin/podman && chmod 755 /usr/local/bin/podman",
                stdin=fake_engine_cli("podman", "10.210.3.0/24 10.210.3.1 1420 jiji-br0"))  # fmt: skip
        lab.run(3, "mkdir -p /etc/containers && cat > /etc/containers/containers.conf", stdin=own)
        run_step(lab, 3, step)
        run_step(lab, 3, step)
        calls = lab.run(3, "cat /tmp/podman-calls")
        assert calls.count("network create --driver") == 1
        assert "--subnet 10.210.3.0/24 --gateway 10.210.3.1 --interface-name jiji-br0 --disable-dns --opt mtu=1420 jiji" in calls
        assert lab.run(3, f"cat {layout.PODMAN_DROP_IN}").splitlines()[1:] == [
            "[containers]",
            'dns_servers = ["10.210.3.1"]',
        ]
        run_step(lab, 3, step, "remove")
        assert (
            lab.run(3, f"ls {layout.PODMAN_DROP_IN} 2>/dev/null; cat /etc/containers/containers.conf", check=False)
            == own
        )
        assert "network rm jiji" in lab.run(3, "cat /tmp/podman-calls")
    finally:
        lab.run(3, "rm -rf /usr/local/bin/podman /etc/containers /tmp/podman-* /var/lib/jiji-net /usr/local/lib/jiji-net",
                check=False)  # fmt: skip


def test_the_host_step_names_what_is_missing(lab4: Lab) -> None:
    """The first step on a server stops before changing anything, saying what to fix."""
    lab = lab4
    docker = steps.host_step("lab3-host", "docker").script
    as_nobody = lab.run(3, "su -s /bin/sh nobody -c 'sh -s -- apply' 2>&1; echo exit=$?", stdin=docker, check=False)
    assert "connected as nobody" in as_nobody and "connect as root (servers[].user)" in as_nobody
    assert as_nobody.strip().endswith("exit=1")
    # Only some tools on PATH: the message lists exactly the others (docker is not on the lab).
    lab.run(3, "mkdir -p /tmp/somebin && for t in sh id hostname ip python3 mkdir systemctl sha256sum timeout awk cat mv"
               " printf; do ln -sf $(command -v $t) /tmp/somebin/$t; done")  # fmt: skip
    partial = lab.run(3, "PATH=/tmp/somebin sh -s -- apply 2>&1; echo exit=$?", stdin=docker, check=False)
    assert "lab3: host: lacks: wg wg-quick iptables docker wireguard(kernel-module-or-wireguard-go)." in partial, (
        partial
    )
    assert partial.strip().endswith("exit=1")
    assert lab.run(3, "ls /var/lib/jiji-net 2>&1 || true").strip().endswith("No such file or directory")
    lab.run(3, "rm -rf /tmp/somebin")
    # sshd without the sftp subsystem (uploads need it) is named.
    lab.run(3, "sed -i 's/^Subsystem/#Subsystem/' /etc/ssh/sshd_config")
    try:
        no_sftp = lab.run(
            3, "sh -s -- apply 2>&1; echo exit=$?", stdin=steps.host_step("lab3-host", "none").script, check=False
        )
    finally:
        lab.run(3, "sed -i 's/^#Subsystem/Subsystem/' /etc/ssh/sshd_config")
    assert "sshd offers no sftp subsystem" in no_sftp and no_sftp.strip().endswith("exit=1"), no_sftp
    ok = steps.host_step("lab3-host", "none").script
    key = lab.run(3, "sh -s -- apply", stdin=ok).strip()
    assert len(key) == 44 and lab.run(3, "sh -s -- apply", stdin=ok).strip() == key, "the key is made once"
    lab.run(3, "sh -s -- remove", stdin=ok)
    assert lab.run(3, "ls /var/lib/jiji-net /etc/wireguard/jiji0.key 2>&1 || true").count("No such file") == 2


def test_a_step_that_hangs_is_stopped_and_says_so(lab4: Lab) -> None:
    lab = lab4
    hung = steps.Step(kind="test", script="sleep 60\n", timeout=2)
    started = time.monotonic()
    out = lab.run(3, f"( {hung.create} ) 2>&1; echo exit=$?", stdin=hung.script, check=False)
    assert time.monotonic() - started < 20
    assert "exit=124" in out and "jiji-net: the apply step timed out after 2 s" in out, out


def test_a_failed_up_is_finished_by_the_next(lab4: Lab) -> None:
    """Corrosion's API port is taken on lab1 (klukai keeps running without its API): `up` stops at
    that step with the unit's log; once the port is free, the next `up` restarts it, runs what is
    left, and the mesh is whole. The hosts here drop what their INPUT rules do not accept (only
    sshd is), as default-deny servers do: the mesh's own ACCEPT rules must be enough."""
    lab = lab4
    engine = make_engine("lab-failed")
    # SO_REUSEADDR: an earlier test's Corrosion may have left connections in TIME_WAIT.
    blocker = "systemd-run --unit=jiji-test-blocker python3 -c 'import socket, time; s = socket.socket();" \
        " s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);" \
        " s.bind((\"127.0.0.1\", 9220)); s.listen(); time.sleep(600)'"  # fmt: skip
    cfg = config(lab, 3)
    try:
        for i in range(3):
            lab.run(i, "iptables -w -I INPUT 1 -p tcp --dport 22 -j ACCEPT && iptables -w -P INPUT DROP")
        lab.run(1, blocker)
        wait_until(lambda: "127.0.0.1:9220" in lab.run(1, "ss -ltn"), 5, "the blocker listens on 9220")
        with pytest.raises(CommandFailed) as failed:
            engine.up(cfg)
        message = str(failed.value)
        # The whole failure on a mismatch: pytest shortens long strings, and CI keeps only its output.
        assert (
            "jiji-net: lab1: corrosion: jiji-corrosion is running but its API on 127.0.0.1:9220 does not answer after 30 s"
            in message
        ), "\n".join(line for line in message.splitlines() if "jiji-net:" in line or "error" in line.lower())[-4000:]
        assert "PRIVATE KEY" not in message
        done = names(failed.value.actions, "create", "update")
        assert "lab1-wireguard" in done and "lab1-corrosion" not in done and "lab1-dns" not in done
        lab.run(1, "systemctl stop jiji-test-blocker")
        again = engine.up(cfg)
        rerun = {n for _, n in again.actions}
        assert {"lab1-corrosion", "lab1-dns", "jiji-registry"} <= rerun and not rerun & (done - {"lab1-corrosion"}), (
            rerun
        )
        print(f"\nfinishing the failed up: {again.seconds:.1f} s, {len(rerun)} steps")
        for i in range(3):
            wait_until(lambda i=i: dig(lab, i, MESH[i], "www.lab.test") == ["198.18.0.200"], 10, f"lab{i} DNS")
        assert lab.run(1, f"{CORROSION} query 'SELECT count(*) FROM servers'").strip() == "3"
        for i in range(3):
            members = lab.run(i, f"{CORROSION} cluster members")
            assert all(f'"{MESH[j]}:9280"' in members for j in range(3) if j != i), members
            assert "exit=0" in ready(lab, i), ready(lab, i)
        assert engine.up(cfg).actions == []
    finally:
        lab.run(
            1,
            "systemctl stop jiji-test-blocker 2>/dev/null; systemctl reset-failed jiji-test-blocker 2>/dev/null; true",
        )
        engine.destroy()
        engine.close()
        for i in range(3):
            lab.run(i, "iptables -w -P INPUT ACCEPT; iptables -w -D INPUT -p tcp --dport 22 -j ACCEPT", check=False)


def test_a_wrong_host_key_stops_before_anything_runs_there(lab4: Lab) -> None:
    """lab1 answers with a host key other than the pinned one (as an impostor would): no step runs
    on it, and the failure names it."""
    lab = lab4
    engine = make_engine("lab-hostkey")
    cfg = config(lab, 3)
    cfg["servers"][1]["host_key"] = cfg["servers"][0]["host_key"]
    try:
        with pytest.raises(CommandFailed) as failed:
            engine.up(cfg)
        assert "lab1-host" in str(failed.value), failed.value
        assert not any(n.startswith("lab1-") for n in names(failed.value.actions, "create", "update"))
        assert lab.run(1, "ls /var/lib/jiji-net 2>&1 || true").strip().endswith("No such file or directory")
    finally:
        engine.up(config(lab, 3))  # the real key: a stack that can be destroyed everywhere
        engine.destroy()
        engine.close()
