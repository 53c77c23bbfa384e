"""Container engines on three lab hosts through the real engine (tests/engines.py prints which CLI
and provider ran): a change of `container_engine` on running servers, applied completely or
refused before anything changes, and the firewall held through restarts of the network unit.

Switches: each engine's state after a switch is the state a fresh deploy of that engine makes
(the host snapshot of test_containers_on_lab, paths, links, firewall, units), so nothing of the
old engine is left; a switch while the old engine still has containers on `jiji` is refused with
the steps to take and changes nothing.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Lab, module_lab
from tests.engines import CommandFailed, RealEngine, make_engine
from tests.harness import wait_until
from tests.test_containers_on_lab import HOST_AS_FOUND, IMAGE, MESH, NAME, api, answers, container_ip
from tests.test_mesh_on_lab import assert_unchanged, config, ready

pytestmark = pytest.mark.corrosion

RESTARTS = 100
PROBE_PORT = 8999  # on lab0's mesh address: not DNS, not in container_host_ports, so dropped for containers
# A container's connection attempts to the probe port, about 100 a second (busybox's nc has no
# UDP; each attempt runs in the background and gives up after 1 s); bounded in count and time.
PROBE_LOOP = (
    "i=0; end=$(($(date +%s) + {seconds})); while [ $i -lt {count} ] && [ $(date +%s) -lt $end ]"
    " && [ ! -e /tmp/stop ]; do nc -w 1 {address} {port} </dev/null >/dev/null 2>&1 & usleep 10000; i=$((i + 1));"
    " done; echo sent=$i"
)
DNS_LOOP = (
    "ok=0; bad=0; end=$(($(date +%s) + {seconds})); while [ $((ok + bad)) -lt {count} ] && [ $(date +%s) -lt $end ]"
    " && [ ! -e /tmp/stop ]; do if nslookup www.lab.test {address} >/dev/null 2>&1; then ok=$((ok + 1));"
    " else bad=$((bad + 1)); fi; done; echo dns_ok=$ok dns_failed=$bad"
)
# Counts the connections that reach the probe port from the container subnet (run on the host).
LISTENER = (
    "import os, socket\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('{address}', {port}))\n"
    "s.listen(512)\n"
    "n = 0\n"
    "while True:\n"
    "    c, source = s.accept()\n"
    "    c.close()\n"
    "    if source[0].startswith('{subnet}'):\n"
    "        n += 1\n"
    "        open('/run/jiji-test-leaks.new', 'w').write(str(n))\n"
    "        os.replace('/run/jiji-test-leaks.new', '/run/jiji-test-leaks')\n"
)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    instance = next(labs := module_lab(3, containers=True))
    for i in range(3):
        subprocess.run(["bash", str(instance.script), "image", str(i)], check=True, capture_output=True, timeout=120)
    yield instance
    next(labs, None)


@pytest.fixture
def engine(lab: Lab) -> Iterator[RealEngine]:
    e = make_engine("engines")
    try:
        yield e
    finally:
        for i in range(3):
            lab.run(i, "podman rm -af >/dev/null 2>&1; systemctl stop jiji-test-listener 2>/dev/null; true", check=False)
        try:
            e.destroy()
        finally:
            e.close()


def snapshot(lab: Lab) -> dict[int, str]:
    return {i: lab.run(i, HOST_AS_FOUND) for i in range(3)}


def works(lab: Lab, engine_name: str) -> None:
    """What a fresh deploy must show: `jiji-net ready` everywhere, names forwarded, and with an
    engine, a container on lab0 found by name from lab2."""
    for i in range(3):
        assert "exit=0" in ready(lab, i), ready(lab, i)
        assert "198.18.0.200" in lab.run(i, f"dig +short +time=1 +tries=2 @{MESH[i]} www.lab.test")
    if engine_name == "none":
        return
    api(lab, 0)
    address = container_ip(lab, 0)
    wait_until(lambda: answers(lab, 2) == [address], 15, f"lab2 answers {NAME} with lab0's container")
    lab.run(0, "podman rm -f api >/dev/null")
    wait_until(lambda: answers(lab, 2) == [], 15, f"lab2 forgets {NAME}")


def test_engine_switches_leave_nothing_of_the_old_engine(lab: Lab, engine: RealEngine) -> None:
    found = snapshot(lab)
    engine.up(config(lab, 3, container_engine="podman"))
    works(lab, "podman")
    podman_fresh = snapshot(lab)

    # A switch while podman still runs a container on `jiji` is refused, and nothing changes.
    api(lab, 1)
    with pytest.raises(CommandFailed) as refused:
        engine.up(config(lab, 3, container_engine="none"))
    assert "container_engine changes from podman to none, but podman still has containers on its network jiji" in str(
        refused.value
    )
    lab.run(1, "podman rm -f api >/dev/null")
    for i in range(3):
        assert_unchanged(podman_fresh[i], lab.run(i, HOST_AS_FOUND), f"lab{i} after the refused switch")

    engine.up(config(lab, 3, container_engine="none"))
    works(lab, "none")
    none_switched = snapshot(lab)
    for i in range(3):
        assert lab.run(i, "podman network exists jiji; echo $?").strip() == "1"
        assert "jiji-registrar" not in lab.run(i, "systemctl list-units --all --no-legend 'jiji*'")

    engine.up(config(lab, 3, container_engine="podman"))
    works(lab, "podman")
    for i in range(3):
        assert_unchanged(podman_fresh[i], lab.run(i, HOST_AS_FOUND), f"lab{i} switched none -> podman")

    # The state a fresh `none` deploy makes is the state the switch made.
    engine.destroy()
    for i in range(3):
        assert_unchanged(found[i], lab.run(i, HOST_AS_FOUND), f"lab{i} after destroy")
    engine.up(config(lab, 3, container_engine="none"))
    for i in range(3):
        assert_unchanged(none_switched[i], lab.run(i, HOST_AS_FOUND), f"lab{i}: podman -> none against a fresh none")
    print("\nswitches podman -> none -> podman: each as a fresh deploy of that engine; a switch with a container refused")


def leaks(lab: Lab) -> int:
    return int(lab.run(0, "cat /run/jiji-test-leaks 2>/dev/null || echo 0").strip())


def restarts_under_load(lab: Lab, restart: str) -> dict[str, int]:
    """RESTARTS restarts of the network unit on lab0 while a container there sends datagrams to a
    port the firewall drops for containers, asks DNS, and pings lab1: what got through, and how
    DNS fared."""
    baseline = leaks(lab)
    seconds, count = 240, 200_000
    probe = PROBE_LOOP.format(seconds=seconds, count=count, address=MESH[0], port=PROBE_PORT)
    dns = DNS_LOOP.format(seconds=seconds, count=count, address=MESH[0])
    lab.run(
        0,
        f"podman run -d --name load --network jiji {IMAGE} sh -c"
        f" '( {probe} ) > /tmp/probe.out & ( {dns} ) > /tmp/dns.out & ping -q -i 0.2 -w {seconds} {MESH[1]} > /tmp/ping.out; wait'",
    )
    try:
        time.sleep(2)
        started = time.monotonic()
        lab.run(0, f"for i in $(seq {RESTARTS}); do {restart}; done")
        took = time.monotonic() - started
        time.sleep(2)
        lab.run(0, "podman exec load touch /tmp/stop; podman exec load pkill ping; true", check=False)
        wait_until(lambda: "exited" in lab.run(0, "podman inspect load --format '{{.State.Status}}'"), 30, "load ends")
        out = lab.run(0, "podman cp load:/tmp/probe.out - | tar -xO; podman cp load:/tmp/dns.out - | tar -xO;"
                         " podman cp load:/tmp/ping.out - | tar -xO")
    finally:
        lab.run(0, "podman rm -f load >/dev/null 2>&1; true", check=False)
    numbers = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", out)}
    ping = re.search(r"(\d+) packets transmitted, (\d+) packets received", out)
    assert ping and numbers.get("sent", 0) > 0 and numbers.get("dns_ok", 0) > 0, out
    return {**numbers, "leaked": leaks(lab) - baseline, "ping_sent": int(ping[1]), "ping_received": int(ping[2]), "seconds": int(took)}


def test_the_firewall_holds_through_network_unit_restarts(lab: Lab, engine: RealEngine) -> None:
    engine.up(config(lab, 3, container_engine="podman"))
    lab.run(
        0,
        f"systemd-run --quiet --unit jiji-test-listener python3 -c \"$(cat)\"",
        stdin=LISTENER.format(address=MESH[0], port=PROBE_PORT, subnet="10.210.0."),
    )
    # The probe can see a leak: without the firewall's chains, a container's connection arrives.
    lab.run(0, "iptables -D INPUT -j JIJI-INPUT")
    lab.run(0, f"podman run --rm --network jiji {IMAGE} nc -w 1 {MESH[0]} {PROBE_PORT} </dev/null", check=False)
    wait_until(lambda: leaks(lab) > 0, 5, "the listener counts a connection from a container")
    lab.run(0, "systemctl restart jiji-net-network")

    held = restarts_under_load(lab, "systemctl restart jiji-net-network")
    print(f"\n{RESTARTS} restarts of jiji-net-network in {held['seconds']} s under load: {held}")
    assert held["leaked"] == 0, held
    assert held["dns_failed"] == 0, held
    # The old unit stopped with `down` (every rule removed) before each start: the same restarts
    # with that ExecStop put back show what this test catches.
    lab.run(0, "mkdir -p /run/systemd/system/jiji-net-network.service.d && printf '[Service]\\nExecStop=/usr/local/lib/jiji-net/network.sh down\\n'"
               " > /run/systemd/system/jiji-net-network.service.d/old.conf && systemctl daemon-reload")
    try:
        old = restarts_under_load(lab, "systemctl restart jiji-net-network")
    finally:
        lab.run(0, "rm -rf /run/systemd/system/jiji-net-network.service.d && systemctl daemon-reload && systemctl restart jiji-net-network")
    print(f"the same with the old stop (rules removed, then refilled): {old}")
    assert old["leaked"] > 0, old
