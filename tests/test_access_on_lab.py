"""Access peers just in time (issue 21), through the real engine on 3 lab hosts: a "laptop" network
namespace on the lab underlay runs wireguard-go with the wg-quick file `jiji-net access config`
prints (its own private key put in), and reaches a `.jiji` name and a container on another server
with no server holding its key in the kernel beforehand; what it may reach, the idle timeout,
revocation by the stack, and destroy leaving the hosts as found."""

from __future__ import annotations

import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jiji_ops.jitpeers import REFRESH

from tests.conftest import Lab, module_lab
from tests.engines import make_engine
from tests.harness import REPO, corrosion_binary, wait_until
from tests.test_mesh_on_lab import (
    KEY,
    MESH,
    REPLICATED,
    SNAPSHOT,
    assert_unchanged,
    config,
    container,
    remove_container,
    write,
)

pytestmark = pytest.mark.corrosion

LAPTOP_NS = f"jiji-lap-{os.getpid()}"
LAPTOP_LINK = "jl-lap"  # the root side of its veth, on the lab bridge
LAPTOP_UNDERLAY = "198.18.0.240"
LAPTOP_IF = "jlap0"
WEB = "10.210.1.7"  # a container stand-in on lab1
NAME = "myapp-api.jiji"
ROUNDS = 20
# Without the daemon the client waits for its own retransmit (WireGuard's REKEY_TIMEOUT, 5 s) and
# gets in only if the peer was loaded by then; with it, one round trip plus an install.
FIRST_ANSWER_P99 = 1.0
IDLE = 30  # access_idle_timeout in this test (the setting's minimum)
# The daemon reads the registry and looks at the kernel every second each (jitpeers.REFRESH,
# jit.REAP): a change is acted on within 2 s; 1 s more for the SSH round trips that look.
ACTED_ON = 3.0
# `jiji-net access remove` rounds, each a real revocation held to ACTED_ON: 5 in `make test` (its
# time budget); the p50/p99 in docs/performance.md are over 20 (JIJI_ACCESS_REVOCATIONS=20).
REVOCATIONS = int(os.environ.get("JIJI_ACCESS_REVOCATIONS", "5"))


@pytest.fixture(scope="module")
def lab3() -> Iterator[Lab]:
    corrosion_binary()
    yield from module_lab(3)


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({out.returncode}): {out.stdout}{out.stderr}")
    return out


def in_laptop(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", LAPTOP_NS, *argv, check=check, timeout=timeout)


def laptop_keys() -> tuple[str, str]:
    private = sh("wg", "genkey").stdout.strip()
    public = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, check=True).stdout.strip()
    return private, public


def kernel_peers(lab: Lab, i: int) -> set[str]:
    return set(lab.run(i, "wg show jiji0 peers").split())


def laptop_conf(tmp: Path, outputs: Path, private: str) -> Path:
    tool = REPO / "build" / "jiji-net.pyz"
    printed = sh(sys.executable, str(tool), "--outputs", str(outputs), "access", "config", "laptop").stdout
    assert "PrivateKey = <" in printed and private not in printed
    # wg-quick's DNS line needs resolvconf, which this machine lacks: the test asks the server
    # named there directly instead.
    dns = next(line.split(" = ")[1] for line in printed.splitlines() if line.startswith("DNS = "))
    assert dns == MESH[0]
    text = "\n".join(
        f"PrivateKey = {private}" if line.startswith("PrivateKey = ") else line
        for line in printed.splitlines()
        if not line.startswith("DNS = ")
    )
    path = tmp / f"{LAPTOP_IF}.conf"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def laptop_up(conf: Path) -> None:
    in_laptop("wg-quick", "up", str(conf), timeout=60)


def laptop_down(conf: Path) -> None:
    in_laptop("wg-quick", "down", str(conf), check=False, timeout=60)


# A TCP connect from the laptop: connected, refused (an RST: something answered) or timeout.
CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), 2).close()
    print("connected")
except ConnectionRefusedError:
    print("refused")
except OSError:
    print("timeout")
"""


def what_lab0_did(lab: Lab) -> str:
    """For a failure: the daemon's last lines and the interface on lab0, the laptop's side."""
    return "\n".join(
        lab.run(0, command, check=False)
        for command in ("journalctl -u jiji-jit --no-pager -n 25", "wg show jiji0", "jiji-net access list")
    ) + "\n" + in_laptop("wg", "show", check=False).stdout


def first_answer(argv: list[str], timeout: float) -> tuple[float, str]:
    started = time.monotonic()
    out = in_laptop(*argv, check=False, timeout=timeout)
    return time.monotonic() - started, out.stdout.strip()


def test_a_laptop_gets_in_just_in_time_and_leaves(lab3: Lab, tmp_path: Path) -> None:
    lab = lab3
    before = {i: lab.run(i, SNAPSHOT) for i in range(3)}
    private, public = laptop_keys()
    engine = make_engine("lab-access")
    conf: Path | None = None
    try:
        peers = [{"name": "laptop", "public_key": public}]
        result = engine.up(config(lab, 3, access_enabled=True, access_peers=peers, access_idle_timeout=IDLE))
        outputs = tmp_path / "outputs.json"
        outputs.write_text(json.dumps(result.outputs))
        servers = {lab.run(i, "wg show jiji0 public-key").strip() for i in range(3)}
        for i in range(3):
            assert kernel_peers(lab, i) == servers - {lab.run(i, "wg show jiji0 public-key").strip()}
            assert lab.run(i, "systemctl is-active jiji-jit").strip() == "active"
            # The daemon reads the key from its file; it is on no command line.
            assert lab.run(i, "cat /etc/wireguard/jiji0.key").strip() not in lab.run(i, "ps -eo args")

        # A service's container on lab1, found by name.
        container(lab, 1, WEB)
        lab.run(1, f"systemd-run --unit test-web ip netns exec ct python3 -m http.server 8080 --bind {WEB}")
        write(lab, 1, [["INSERT INTO services (project, name) VALUES ('myapp', 'api')", []],
                       ["INSERT INTO containers (id, service, project, server_id, ip, health_status, started_at)"
                        " VALUES ('web-1', 'api', 'myapp', 'lab1', ?, 'healthy', 1)", [WEB]]])  # fmt: skip

        # The laptop: its own namespace on the lab underlay, and the printed wg-quick file.
        sh("ip", "netns", "add", LAPTOP_NS)
        sh("ip", "link", "add", LAPTOP_LINK, "type", "veth", "peer", "name", "eth0", "netns", LAPTOP_NS)
        sh("ip", "link", "set", LAPTOP_LINK, "master", "jiji-lab0", "up")
        in_laptop("ip", "addr", "add", f"{LAPTOP_UNDERLAY}/24", "dev", "eth0")
        in_laptop("ip", "link", "set", "eth0", "up")
        in_laptop("ip", "link", "set", "lo", "up")
        conf = laptop_conf(tmp_path, outputs, private)

        dns_times, http_times = [], []
        for _ in range(ROUNDS):
            for i in range(3):
                lab.run(i, f"wg set jiji0 peer {public} remove")
            laptop_down(conf)
            laptop_up(conf)
            seconds, answer = first_answer(["dig", "+short", "+time=8", "+tries=1", f"@{MESH[0]}", NAME], 15)
            assert answer == WEB, f"dig {NAME} from the laptop: {answer!r}"
            dns_times.append(seconds)
            seconds, body = first_answer(["curl", "-s", "-m", "8", "-o", "/dev/null", "-w", "%{http_code}", f"http://{WEB}:8080/"], 15)
            assert body == "200", f"the container on lab1 from the laptop: {body!r}"
            http_times.append(seconds)
        q = {what: (statistics.median(t), statistics.quantiles(t, n=100)[98]) for what, t in (("dns", dns_times), ("http", http_times))}
        print(f"\nfirst packet -> first DNS answer over {ROUNDS} rounds: p50 {q['dns'][0]:.3f} s, p99 {q['dns'][1]:.3f} s")
        print(f"first packet -> first HTTP answer (another server): p50 {q['http'][0]:.3f} s, p99 {q['http'][1]:.3f} s")
        assert q["dns"][1] <= FIRST_ANSWER_P99 and q["http"][1] <= FIRST_ANSWER_P99, (dns_times, http_times)

        # In the kernel only where it talked: lab0 (DNS) and lab1 (the container), not lab2.
        assert public in kernel_peers(lab, 0) and public in kernel_peers(lab, 1)
        assert public not in kernel_peers(lab, 2)
        address = result.outputs["mesh"]["access"]["peers"]["laptop"]["address"]
        assert lab.run(0, "wg show jiji0 allowed-ips").count(f"{address}/32") == 1

        # What it may not reach: sshd, gossip and the API on a mesh address; another server's host.
        for target, port in ((MESH[0], 22), (MESH[0], 9280), (MESH[0], 9220), (MESH[1], 22), (MESH[2], 22)):
            probe = in_laptop(sys.executable, "-c", CONNECT, target, str(port), check=False, timeout=10)
            assert probe.stdout.strip() in ("timeout", "refused"), f"the laptop reached {target}:{port}: {probe.stdout}"
        # ...while the same probe does reach what it may: DNS over TCP on a mesh address.
        assert in_laptop(sys.executable, "-c", CONNECT, MESH[0], "53", check=False).stdout.strip() == "connected"

        # A reboot loads no access peer: jiji0.conf lists the servers only, and the daemon is back.
        assert public in kernel_peers(lab, 0)
        sh("bash", str(REPO / "lab" / "lab.sh"), "stop", "0", timeout=120)
        sh("bash", str(REPO / "lab" / "lab.sh"), "start", "0", timeout=300)
        wait_until(lambda: lab.run(0, "systemctl is-active jiji-jit", check=False).strip() == "active", 90, "jiji-jit after the reboot")
        assert kernel_peers(lab, 0) == servers - {lab.run(0, "wg show jiji0 public-key").strip()}

        # Idle: the laptop, back in on every server (a DNS question to each mesh address, just in
        # time on the rebooted one too), goes quiet, and leaves every kernel after the idle timeout.
        laptop_down(conf)
        laptop_up(conf)
        for i in range(3):
            assert first_answer(["dig", "+short", "+time=3", "+tries=1", f"@{MESH[i]}", NAME], 10)[1] == WEB
        assert all(public in kernel_peers(lab, i) for i in range(3))
        laptop_down(conf)
        quiet = time.monotonic()
        wait_until(lambda: all(public not in kernel_peers(lab, i) for i in range(3)), IDLE + ACTED_ON + 5, "the idle laptop to leave")
        idle_seconds = time.monotonic() - quiet
        print(f"idle laptop gone from every kernel after {idle_seconds:.1f} s (idle timeout {IDLE} s)")
        assert idle_seconds >= IDLE - 1, "removed before its idle timeout"

        # Back just in time; then the stack removes it, and it is gone from every kernel at once.
        laptop_up(conf)
        _, answer = first_answer(["dig", "+short", "+time=3", "+tries=1", f"@{MESH[0]}", NAME], 10)
        assert answer == WEB

        # Its `allow` opens what it names on the servers it comes in by, and nothing more: a
        # registry change (jiji-jit keeps JIJI-ACCESS), acted on within ACTED_ON of `up`. The
        # peer's removal below takes its rules with it.
        def reaches(target: str, port: int) -> str:
            return in_laptop(sys.executable, "-c", CONNECT, target, str(port), check=False, timeout=10).stdout.strip()

        allowing = [{"name": "laptop", "public_key": public, "allow": ["tcp/22"]}]
        engine.up(config(lab, 3, access_enabled=True, access_peers=allowing, access_idle_timeout=IDLE))
        opened = time.monotonic()
        wait_until(lambda: reaches(MESH[0], 22) == "connected", ACTED_ON + 2, "sshd on lab0 opened by allow")
        print(f"allow tcp/22 through the stack: lab0's sshd reachable {time.monotonic() - opened:.1f} s after `up` returned")
        assert reaches(MESH[1], 22) == "connected", "allow opens every server the laptop comes in by"
        for port in (9280, 9220, 9480):
            assert reaches(MESH[0], port) in ("timeout", "refused"), f"allow tcp/22 opened {port}"

        engine.up(config(lab, 3, access_enabled=True, access_peers=[], access_idle_timeout=IDLE))
        removed = time.monotonic()
        wait_until(lambda: all(public not in kernel_peers(lab, i) for i in range(3)), ACTED_ON, "the removed laptop to leave")
        for i in range(2):
            wait_until(lambda i=i: lab.run(i, "iptables -S JIJI-ACCESS").strip() == "-N JIJI-ACCESS", ACTED_ON,
                       f"lab{i}'s allow rules gone with the peer")  # fmt: skip
        print(f"removed from the stack: gone from every kernel {time.monotonic() - removed:.1f} s after `up` returned")
        _, answer = first_answer(["dig", "+short", "+time=2", "+tries=1", f"@{MESH[0]}", NAME], 10)
        assert answer != WEB, "a removed laptop still gets answers"

        # At run time, as for a CI runner: `jiji-net access add` through one server, for 20 s. The
        # laptop gets in with the address it was given; `access remove` and the expiry each take
        # it out of every kernel within ACTED_ON.
        def access(*args: str, on: str = "lab2") -> Any:
            argv = [sys.executable, str(REPO / "build" / "jiji-net.pyz"), "--outputs", str(outputs), "-i", str(KEY),
                    "-H", on, "--json", "access", *args]  # fmt: skip
            out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stdout + out.stderr
            return json.loads(out.stdout)[on]["output"]

        revocations = []
        for n in range(REVOCATIONS + 1):
            last = n == REVOCATIONS  # the last one leaves by expiry instead
            added = access("add", "runner", "--public-key", public, "--expires-in", "20s" if last else "1h")
            assert ipaddress.IPv4Address(added["address"]) in ipaddress.IPv4Network("10.211.128.0/17"), added
            # Added through lab2; the laptop asks lab0 once the row has reached it and lab0's daemon
            # has read it (its next read of the registry, within REFRESH s). Before that it would be
            # refused as unknown, and get in on its retransmit 5 s later.
            wait_until(lambda: "runner" in {p["name"] for p in access("list", on="lab0")}, REPLICATED, "the row on lab0")
            time.sleep(REFRESH)
            # The laptop starts over each time: the server forgot its session with the peer.
            laptop_down(conf)
            conf.write_text(conf.read_text().replace(f"Address = {address}/32", f"Address = {added['address']}/32"))
            address = added["address"]
            laptop_up(conf)
            _, answer = first_answer(["dig", "+short", "+time=3", "+tries=1", f"@{MESH[0]}", NAME], 10)
            assert answer == WEB, f"the runner added at run time ({n}) got {answer!r}\n{what_lab0_did(lab)}"
            assert public in kernel_peers(lab, 0)
            if n == 0:
                listed = {p["name"]: p for p in access("list")}
                assert listed["runner"]["origin"] == "cli" and "laptop" not in listed
            if last:
                time.sleep(max(0.0, added["expires_at"] - time.time()))
            else:
                access("remove", "runner")
            gone_at = time.monotonic()
            wait_until(lambda: all(public not in kernel_peers(lab, i) for i in range(3)), ACTED_ON, "the runner to leave")
            if not last:
                revocations.append(time.monotonic() - gone_at)
        p50, worst = statistics.median(revocations), max(revocations)
        print(f"`jiji-net access remove` -> gone from every kernel, {REVOCATIONS} times: p50 {p50:.2f} s, max {worst:.2f} s")
        print(f"expired -> gone from every kernel: {time.monotonic() - gone_at:.2f} s")
        _, answer = first_answer(["dig", "+short", "+time=2", "+tries=1", f"@{MESH[0]}", NAME], 10)
        assert answer != WEB, "the expired runner still gets answers"
        assert "runner" in {p["name"] for p in access("list")}  # expired, still listed until removed
    finally:
        if conf is not None:
            laptop_down(conf)
        sh("ip", "netns", "del", LAPTOP_NS, check=False)
        sh("ip", "link", "del", LAPTOP_LINK, check=False)
        lab.run(1, "systemctl stop test-web 2>/dev/null; systemctl reset-failed test-web 2>/dev/null; true", check=False)
        remove_container(lab, 1)
        engine.destroy()
        engine.close()
    for i in range(3):
        assert_unchanged(before[i], lab.run(i, SNAPSHOT), f"lab{i} after destroy")
