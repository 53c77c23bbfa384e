"""The program's commands, run for real on four lab hosts.

The pulumi-command provider cannot be built here, so `tests/labprovider.py` runs each command the
program registers over SSH with the same inputs, keeping the last inputs so unchanged resources
are left alone and removed ones run their `delete`. Everything on the hosts is real: sshd,
systemd, wireguard-go, klukai, jiji-dns, dig.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pulumi
import pytest

from components import artifacts, scripts
from tests.conftest import Lab
from tests.harness import REPO, corrosion_binary, pulumi_bin_dir, wait_until
from tests.labprovider import CommandFailed, LabProvider
from tests.program import Evaluation, evaluate

pytestmark = pytest.mark.corrosion

KEY = REPO / ".lab" / "lab" / "id_ed25519"
MESH = {i: f"10.210.{i}.1" for i in range(4)}
CORROSION = "/usr/local/lib/jiji-net/corrosion -c /etc/jiji/corrosion/config.toml"

# What "as it was found" means on a host: everything the program could have touched.
SNAPSHOT = r"""
find /etc /usr/local /var/lib -xdev \( -path /var/lib/systemd -o -path /var/lib/dpkg -o -path /etc/ssh \) -prune \
    -o -print | sort
echo --; ip -o link | awk '{print $2}' | grep -v '^eth0@' ; ip -o addr | awk '{print $2, $4}'
echo --; iptables -S; iptables -t nat -S
echo --; cat /proc/sys/net/ipv4/ip_forward
echo --; systemctl list-units --all --no-legend --plain 'jiji*' 'wg-quick*' | awk '$3 != "inactive" {print $1, $3}'
"""


@pytest.fixture(scope="module")
def lab4() -> Iterator[Lab]:
    corrosion_binary()  # fails with the build command when the binary is missing
    instance = Lab(4)
    yield instance
    instance.down()


def config(n: int, **changes: Any) -> dict[str, Any]:
    servers = [{"name": f"lab{i}", "host": f"198.18.0.1{i}", "index": i, "endpoint": f"198.18.0.1{i}"} for i in range(n)]
    return {
        "servers": servers,
        "ssh_private_key": KEY.read_text(),
        "container_engine": "none",
        "corrosion_local_path": str(corrosion_binary()),
        **changes,
    }


def up(provider: LabProvider, cfg: dict[str, Any]) -> tuple[Evaluation, float]:
    started = time.monotonic()
    provider.begin()
    result = evaluate(cfg, provider)
    provider.finish()
    return result, time.monotonic() - started


@contextlib.contextmanager
def new_dns_build() -> Iterator[None]:
    """The program as it would run after a change to jiji-dns's sources: a different zipapp."""
    real = artifacts.zipapps

    def changed() -> tuple[artifacts.Artifact, artifacts.Artifact]:
        dns, tool = real()
        path = Path(dns.path).with_name("jiji-dns-changed.pyz")
        with zipfile.ZipFile(path.with_suffix(".zip"), "w") as z:
            with zipfile.ZipFile(dns.path) as original:
                for item in original.infolist():
                    z.writestr(item, original.read(item))
            z.writestr("CHANGED", "a new build")
        data = b"#!/usr/bin/env python3\n" + path.with_suffix(".zip").read_bytes()
        path.with_suffix(".zip").unlink()
        path.write_bytes(data)
        return artifacts.Artifact(str(path), hashlib.sha256(data).hexdigest()), tool

    artifacts.zipapps = changed  # type: ignore[assignment]
    try:
        yield
    finally:
        artifacts.zipapps = real  # type: ignore[assignment]
        (artifacts.BUILD_DIR / "jiji-dns-changed.pyz").unlink(missing_ok=True)


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
    lab.run(i, "ip netns del ct 2>/dev/null; ip link del cth 2>/dev/null; true")


def test_mesh_up_change_and_destroy(lab4: Lab) -> None:
    lab = lab4
    before = {i: lab.run(i, SNAPSHOT) for i in range(4)}
    provider = LabProvider()
    try:
        # Cold up of three servers.
        first, cold_seconds = up(provider, config(3))
        print(f"\ncold up of 3 servers: {cold_seconds:.1f} s, {len(provider.actions)} resources created")
        keys = {f"lab{i}": first.outputs["servers"][f"lab{i}"]["public_key"] for i in range(3)}
        assert all(len(k) == 44 and k.endswith("=") for k in keys.values())
        for i in range(3):
            for j in range(3):
                if i != j:
                    assert lab.pings(i, MESH[j]), f"lab{i} cannot ping lab{j} over jiji0"
        for i in range(3):
            seen = lab.handshakes(i)
            assert set(seen) == {keys[f"lab{j}"] for j in range(3) if j != i} and all(seen.values()), seen
            assert "PrivateKey" not in lab.run(i, "cat /etc/wireguard/jiji0.conf")
            assert lab.run(i, "stat -c %a /etc/wireguard/jiji0.key").strip() == "600"
        # Corrosion: each node sees the two others; the program registered all three servers.
        for i in range(3):
            members = lab.run(i, f"{CORROSION} cluster members")
            assert {a for a in MESH.values() if a != MESH[i] and f'"{a}:9280"' in members} == {
                MESH[j] for j in range(3) if j != i
            }, members
        rows = lab.run(1, f"{CORROSION} query 'SELECT id, wireguard_pubkey FROM servers ORDER BY id'").split()
        assert rows == [f"lab{i}|{keys[f'lab{i}']}" for i in range(3)]

        # Service discovery: a row written on lab0 is answered by lab1's DNS within 2 s.
        write(
            lab,
            0,
            [
                ["INSERT INTO services (project, name) VALUES (?, ?)", ["shop", "web"]],
                [
                    "INSERT INTO containers (id, service, project, server_id, ip, health_status, started_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    ["c0", "web", "shop", "lab0", "10.210.0.2", "healthy", 1],
                ],
            ],
        )
        written = time.monotonic()
        wait_until(lambda: dig(lab, 1, MESH[1], "shop-web.jiji") == ["10.210.0.2"], 2, "lab1 answers shop-web.jiji")
        print(f"row on lab0 -> answer from lab1: {time.monotonic() - written:.2f} s")
        write(lab, 0, [["UPDATE containers SET health_status = 'unhealthy' WHERE id = ?", ["c0"]]])
        wait_until(lambda: dig(lab, 1, MESH[1], "shop-web.jiji") == [], 2, "an unhealthy container leaves the answer")
        # Forwarded through the lab's upstream; not answered on the underlay address.
        assert dig(lab, 2, MESH[2], "www.lab.test") == ["198.18.0.200"]
        assert "connection refused" in lab.run(1, "dig +time=1 +tries=1 @198.18.0.11 www.lab.test", check=False)

        # The firewall: from the underlay (the lab resolver's namespace, routed at lab0's mesh
        # address), sshd answers there but DNS on the mesh address is dropped.
        outside = ["ip", "netns", "exec", "jiji-lab-dns"]
        subprocess.run([*outside, "ip", "route", "replace", "10.210.0.1/32", "via", lab.ip(0)], check=True)
        try:
            ssh_port = subprocess.run(
                [*outside, sys.executable, "-c", "import socket; socket.create_connection(('10.210.0.1', 22), 3)"],
                capture_output=True,
            )
            assert ssh_port.returncode == 0, "routing to lab0's mesh address from the underlay"
            probe = subprocess.run(
                [*outside, "dig", "+time=1", "+tries=1", "@10.210.0.1", "www.lab.test"], capture_output=True, text=True
            )
            assert "timed out" in probe.stdout, probe.stdout
            counters = lab.run(0, "iptables -w -v -S JIJI-INPUT | grep -- '-d 10.210.0.1/32 -p udp -m udp --dport 53'")
            assert "-c 0 0" not in counters, counters
        finally:
            subprocess.run([*outside, "ip", "route", "del", "10.210.0.1/32"], check=False)

        # Containers on lab0 and lab2 reach each other with their own addresses.
        container(lab, 0, "10.210.0.2")
        container(lab, 2, "10.210.2.2")
        lab.run(
            2,
            "ip netns exec ct timeout 10 python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
            ' s.bind(("0.0.0.0", 7000)); print(s.recvfrom(64)[1][0])\' > /tmp/peer 2>&1 &',
        )
        assert lab.pings(0, "10.210.2.2", netns="ct")
        lab.run(
            0,
            "ip netns exec ct python3 -c 'import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
            ' [s.sendto(b"x", ("10.210.2.2", 7000)) or time.sleep(0.2) for _ in range(5)]\'',
        )
        assert lab.run(2, "cat /tmp/peer").strip() == "10.210.0.2"
        assert lab.run(0, "ip netns exec ct dig +short +time=1 +tries=1 @10.210.0.1 api.lab.test").strip() == "198.18.0.201"

        # A second up changes nothing.
        _, noop_seconds = up(provider, config(3))
        assert provider.actions == [], provider.actions
        print(f"no-op up: {noop_seconds:.1f} s")

        # A new jiji-dns build is uploaded again (pulumi-command replaces the upload; this provider
        # re-runs it), installed and restarted; the old upload is removed.
        with new_dns_build():
            _, _ = up(provider, config(3))
        assert {a for a in provider.actions} == {
            (kind, f"lab{i}-{step}")
            for i in range(3)
            for kind, step in (("update", "jiji-dns-upload"), ("update", "jiji-dns-install"), ("update", "dns-service"))
        }, provider.actions
        for i in range(3):
            assert len(lab.run(i, "ls /var/lib/jiji-net/staging/ | grep jiji-dns").split()) == 1
            assert dig(lab, i, MESH[i], "www.lab.test") == ["198.18.0.200"]
        up(provider, config(3))  # back to the real build

        # A fourth server: the others' peers change in place; their handshakes and keys survive.
        ifindex = lab.run(0, "ip -o link show jiji0 | cut -d: -f1")
        shake_before = lab.handshakes(0)
        four, add_seconds = up(provider, config(4))
        print(f"adding a 4th server: {add_seconds:.1f} s")
        updated = {n for action, n in provider.actions if action == "update"}
        assert updated == {f"lab{i}-{s}" for i in range(3) for s in ("wg-conf", "corrosion-config", "registry")}
        assert not [a for a in provider.actions if a[0] == "delete"]
        assert lab.run(0, "ip -o link show jiji0 | cut -d: -f1") == ifindex, "jiji0 was recreated"
        shake_after = lab.handshakes(0)
        assert all(shake_after[k] >= v > 0 for k, v in shake_before.items()), (shake_before, shake_after)
        for i in range(3):
            assert four.outputs["servers"][f"lab{i}"] == first.outputs["servers"][f"lab{i}"]
            assert lab.pings(3, MESH[i]) and lab.pings(i, MESH[3])
        wait_until(lambda: "10.210.3.1:9280" in lab.run(0, f"{CORROSION} cluster members"), 15, "lab3 joins Corrosion")
        assert dig(lab, 3, MESH[3], "www.lab.test") == ["198.18.0.200"]

        # Removing it again restores the three-server state; lab3 is left as it was found.
        write(
            lab,
            0,
            [
                [
                    "INSERT INTO containers (id, service, project, server_id, ip, health_status, started_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    ["c3", "web", "shop", "lab3", "10.210.3.2", "healthy", 2],
                ]
            ],
        )
        wait_until(lambda: dig(lab, 1, MESH[1], "shop-web.jiji") == ["10.210.3.2"], 2, "lab3's container answered")
        _, remove_seconds = up(provider, config(3))
        print(f"removing it: {remove_seconds:.1f} s")
        assert {n for a, n in provider.actions if a == "delete"} == {n for n in four.resources if n.startswith("lab3")} - {
            n for n, r in four.resources.items() if not r.typ.startswith("command:")
        }
        assert {n: r["inputs"] for n, r in provider.state.items()} == {
            n: r.inputs for n, r in first.resources.items() if r.typ.startswith("command:")
        }
        assert_unchanged(before[3], lab.run(3, SNAPSHOT), "lab3 after leaving")
        assert MESH[3] not in lab.run(0, "wg show jiji0 allowed-ips")
        wait_until(lambda: dig(lab, 1, MESH[1], "shop-web.jiji") == [], 2, "the removed server's containers leave DNS")
        assert lab.run(2, f"{CORROSION} query \"SELECT count(*) FROM servers WHERE id = 'lab3'\"").strip() == "0"
    finally:
        for i in range(4):
            remove_container(lab, i)
        provider.destroy()
        provider.close()
    # Destroy leaves every server as it was found.
    for i in range(4):
        assert_unchanged(before[i], lab.run(i, SNAPSHOT), f"lab{i} after destroy")


def assert_unchanged(before: str, after: str, what: str) -> None:
    diff = "\n".join(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0))
    assert not diff, f"{what} is not as it was found:\n{diff}"


def stack_with_outputs(workdir: Path, outputs: dict[str, Any]) -> dict[str, str]:
    """A local-backend stack `lab` whose outputs are `outputs`, made by the real engine through
    the Automation API (an inline program needs no language host), and the environment that
    lets `pulumi stack output` find it."""
    from pulumi import automation

    env = {
        **os.environ,
        "PATH": f"{pulumi_bin_dir()}:{os.environ['PATH']}",
        "PULUMI_BACKEND_URL": f"file://{workdir / 'state'}",
        "PULUMI_HOME": str(workdir / "pulumi-home"),
        "PULUMI_CONFIG_PASSPHRASE": "",
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
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
            pulumi_command=automation.PulumiCommand(root=str(pulumi_bin_dir().parent)),
        ),
    )
    assert stack.up(on_output=lambda _: None).summary.result == "succeeded"
    return env


def host_keys(lab: Lab, n: int) -> dict[str, str]:
    """Each lab host's ed25519 host key, to pin in the stack (as a careful operator would)."""
    scan = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", *(lab.ip(i) for i in range(n))], capture_output=True, text=True, timeout=30
    ).stdout
    keys = {line.split()[0]: " ".join(line.split()[1:3]) for line in scan.splitlines() if not line.startswith("#")}
    return {f"lab{i}": keys[lab.ip(i)] for i in range(n)}


def test_operator_commands_tell_the_truth(lab4: Lab, tmp_path: Path) -> None:
    lab = lab4
    before = {i: lab.run(i, SNAPSHOT) for i in range(3)}
    pinned = host_keys(lab, 3)
    cfg = config(3)
    for s in cfg["servers"]:
        s["host_key"] = pinned[s["name"]]
    provider = LabProvider()
    try:
        result, _ = up(provider, cfg)
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
            assert sorted(m["addr"] for m in st["corrosion"]["members"]) == [f"{MESH[j]}:9280" for j in range(3) if j != i]
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
        wait_until(lambda: dig(lab, 1, MESH[1], "shop-web.jiji") == ["10.210.0.9", "10.210.7.2"], 3, "rows replicated")
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
        wait_until(lambda: dig(lab, 2, MESH[2], "shop-web.jiji") == ["10.210.0.2"], 3, "gc reaches DNS")

        # db query refuses writes, before they reach Corrosion.
        refused = ops("-H", "lab0", "db", "query", "INSERT INTO servers (id) VALUES ('x')")
        assert refused.returncode == 2 and "refused: INSERT changes the registry" in refused.stdout

        inspected = json.loads(ops("-H", "lab0", "--json", "inspect", "--container", "c-li").stdout)["lab0"]["output"]
        assert [(r["id"], r["in_server_subnet"], r["exists_here"]) for r in inspected] == [("c-live", True, True)]
        stats = json.loads(ops("-H", "lab0", "--json", "db", "stats").stdout)["lab0"]["output"]
        assert stats["tables"] == {"cluster_metadata": 3, "containers": 2, "servers": 3, "services": 1}

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
        provider.destroy()
        provider.close()
    for i in range(3):
        assert_unchanged(before[i], lab.run(i, SNAPSHOT), f"lab{i} after destroy")


def fake_engine_cli(cli: str, exists: str) -> str:
    """Stands in for the docker or podman CLI: remembers the jiji network, records every call."""
    return f"""#!/bin/sh
echo "$*" >> /tmp/{cli}-calls
case "$1 $2" in
    "network {exists}") [ -e /tmp/{cli}-net ] ;;
    "network create") touch /tmp/{cli}-net ;;
    "network rm") rm -f /tmp/{cli}-net ;;
esac
"""


FAKE_DOCKER_UNIT = """[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'echo start >> /tmp/docker-starts'
"""


def test_docker_daemon_json_is_merged_and_put_back(lab4: Lab) -> None:
    """Our docker step against a recording stand-in for the docker CLI (the lab has no docker):
    daemon.json keeps the operator's keys, dockerd restarts only when `dns` changes, and delete
    puts the operator's `dns` back."""
    lab = lab4
    apply = scripts.docker_network_apply("10.210.3.0/24", "10.210.3.1", 1420)
    daemon = {"log-driver": "journald", "dns": ["192.0.2.53"], "features": {"buildkit": True}}
    try:
        lab.run(3, "cat > /usr/local/bin/docker && chmod 755 /usr/local/bin/docker", stdin=fake_engine_cli("docker", "inspect"))
        lab.run(3, "cat > /etc/systemd/system/docker.service && systemctl daemon-reload", stdin=FAKE_DOCKER_UNIT)
        lab.run(3, "mkdir -p /etc/docker && cat > /etc/docker/daemon.json", stdin=json.dumps(daemon))
        lab.run(3, apply)
        merged = json.loads(lab.run(3, "cat /etc/docker/daemon.json"))
        assert merged == {**daemon, "dns": ["10.210.3.1"]}
        calls = lab.run(3, "cat /tmp/docker-calls")
        assert "network create --driver bridge --subnet 10.210.3.0/24 --gateway 10.210.3.1" in calls
        assert "com.docker.network.bridge.trusted_host_interfaces=jiji0" in calls
        lab.run(3, apply)  # again: nothing to change, no second network, no restart
        assert lab.run(3, "grep -c 'network create' /tmp/docker-calls").strip() == "1"
        assert lab.run(3, "wc -l < /tmp/docker-starts").strip() == "1"
        lab.run(3, scripts.DOCKER_NETWORK_DELETE)
        assert json.loads(lab.run(3, "cat /etc/docker/daemon.json")) == daemon
        assert "network rm jiji" in lab.run(3, "cat /tmp/docker-calls")
        assert lab.run(3, "ls /var/lib/jiji-net/").strip() == ""
        # A daemon.json without "dns" gets the key removed again, not set to null.
        lab.run(3, "echo '{\"log-driver\": \"local\"}' > /etc/docker/daemon.json")
        lab.run(3, apply)
        lab.run(3, scripts.DOCKER_NETWORK_DELETE)
        assert json.loads(lab.run(3, "cat /etc/docker/daemon.json")) == {"log-driver": "local"}
        # A broken daemon.json stops the step with a message, and is left as it was.
        lab.run(3, "echo '{broken' > /etc/docker/daemon.json")
        with pytest.raises(RuntimeError, match="daemon.json is not valid JSON"):
            lab.run(3, apply)
        assert lab.run(3, "cat /etc/docker/daemon.json").strip() == "{broken"
    finally:
        lab.run(
            3,
            "rm -rf /usr/local/bin/docker /etc/systemd/system/docker.service /etc/docker /var/lib/jiji-net"
            " /tmp/docker-*; systemctl daemon-reload",
        )


def test_podman_gets_a_drop_in_and_keeps_containers_conf(lab4: Lab) -> None:
    """Our podman step against a recording stand-in for the podman CLI: the network is created
    once, DNS goes into a drop-in, the operator's containers.conf is never touched."""
    lab = lab4
    apply = scripts.podman_network_apply("10.210.3.0/24", "10.210.3.1", 1420)
    own = '[containers]\nlog_driver = "journald"\n'
    try:
        lab.run(3, "cat > /usr/local/bin/podman && chmod 755 /usr/local/bin/podman", stdin=fake_engine_cli("podman", "exists"))
        lab.run(3, "mkdir -p /etc/containers && cat > /etc/containers/containers.conf", stdin=own)
        lab.run(3, apply)
        lab.run(3, apply)
        calls = lab.run(3, "cat /tmp/podman-calls")
        assert calls.count("network create") == 1
        assert "--subnet 10.210.3.0/24 --gateway 10.210.3.1 --interface-name jiji-br0 --opt mtu=1420 jiji" in calls
        assert lab.run(3, f"cat {scripts.PODMAN_DROP_IN}").splitlines()[1:] == ["[containers]", 'dns_servers = ["10.210.3.1"]']
        lab.run(3, scripts.PODMAN_NETWORK_DELETE)
        assert lab.run(3, f"ls {scripts.PODMAN_DROP_IN} 2>/dev/null; cat /etc/containers/containers.conf") == own
        assert "network rm jiji" in lab.run(3, "cat /tmp/podman-calls")
    finally:
        lab.run(3, "rm -rf /usr/local/bin/podman /etc/containers /tmp/podman-*")


def test_preflight_names_what_is_missing(lab4: Lab) -> None:
    """The first step on a server stops before changing anything, saying what to fix."""
    lab = lab4
    script = shlex.quote(scripts.preflight("docker"))
    as_nobody = lab.run(3, f"su -s /bin/sh nobody -c {script} 2>&1; echo exit=$?", check=False)
    assert "connected as nobody" in as_nobody and "connect as root (servers[].user)" in as_nobody
    assert as_nobody.strip().endswith("exit=1")
    # Only some tools on PATH: the message lists exactly the others (docker is not on the lab).
    lab.run(3, "mkdir -p /tmp/somebin && for t in id hostname ip python3 mkdir systemctl sha256sum; do"
               " ln -sf $(command -v $t) /tmp/somebin/$t; done")  # fmt: skip
    partial = lab.run(3, f"PATH=/tmp/somebin /bin/sh -c {script} 2>&1; echo exit=$?", check=False)
    assert "lab3 lacks: wg wg-quick iptables docker wireguard(kernel-module-or-wireguard-go)." in partial, partial
    assert partial.strip().endswith("exit=1")
    assert lab.run(3, "ls /var/lib/jiji-net 2>&1 || true").strip().endswith("No such file or directory")
    lab.run(3, "rm -rf /tmp/somebin")
    assert lab.run(3, f"/bin/sh -c {shlex.quote(scripts.preflight('none'))}").strip() == "ready"
    lab.run(3, scripts.HOST_CLEANUP)


def test_a_failed_up_is_finished_by_the_next(lab4: Lab) -> None:
    """Corrosion's API port is taken on lab1 (klukai keeps running without its API): `up` stops at
    that step with the unit's log; once the port is free, the next `up` restarts it, runs what is
    left, and the mesh is whole."""
    lab = lab4
    provider = LabProvider()
    # SO_REUSEADDR: an earlier test's Corrosion may have left connections in TIME_WAIT.
    blocker = "systemd-run --unit=jiji-test-blocker python3 -c 'import socket, time; s = socket.socket();" \
        " s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);" \
        " s.bind((\"127.0.0.1\", 9220)); s.listen(); time.sleep(600)'"  # fmt: skip
    try:
        lab.run(1, blocker)
        wait_until(lambda: "127.0.0.1:9220" in lab.run(1, "ss -ltn"), 5, "the blocker listens on 9220")
        with pytest.raises(CommandFailed) as failed:
            up(provider, config(3))
        assert "198.18.0.11" in str(failed.value), failed.value
        assert "jiji-corrosion is running but not serving after 30 s" in str(failed.value), failed.value
        # What ran before the failure stays done; how far other servers got depends on timing.
        done = set(provider.state)
        assert "lab1-wg-conf" in done and "lab1-corrosion-service" not in done and "lab1-dns-service" not in done
        lab.run(1, "systemctl stop jiji-test-blocker")
        _, seconds = up(provider, config(3))
        rerun = {n for _, n in provider.actions}
        assert {"lab1-corrosion-service", "lab1-dns-service"} <= rerun and not rerun & done, rerun
        print(f"\nfinishing the failed up: {seconds:.1f} s, {len(rerun)} steps")
        for i in range(3):
            wait_until(lambda i=i: dig(lab, i, MESH[i], "www.lab.test") == ["198.18.0.200"], 10, f"lab{i} DNS")
        assert lab.run(1, f"{CORROSION} query 'SELECT count(*) FROM servers'").strip() == "3"
        up(provider, config(3))
        assert provider.actions == []
    finally:
        lab.run(1, "systemctl stop jiji-test-blocker 2>/dev/null; systemctl reset-failed jiji-test-blocker 2>/dev/null; true")
        provider.destroy()
        provider.close()
