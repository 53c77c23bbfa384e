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
from tests.test_containers_on_lab import DOCKER_AS_FOUND, IMAGE, MESH, NAME, answers, api, container_ip, with_docker
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
            lab.run(
                i,
                "for e in podman docker; do $e ps -aq 2>/dev/null | xargs -r $e rm -f >/dev/null 2>&1; done;"
                " systemctl stop jiji-test-listener 2>/dev/null; true",
                check=False,
            )
        try:
            e.destroy()
        finally:
            e.close()


def snapshot(lab: Lab) -> dict[int, str]:
    """Each host's paths, links, firewall and units (docker's and podman's storage left out), and
    its daemon.json byte for byte."""
    return {i: lab.run(i, DOCKER_AS_FOUND + "echo --; cat /etc/docker/daemon.json 2>/dev/null || echo ABSENT") for i in range(3)}


def same_as(expected: dict[int, str], lab: Lab, what: str) -> None:
    now = snapshot(lab)
    for i in range(3):
        assert_unchanged(expected[i], now[i], f"lab{i} {what}")


def works(lab: Lab, e: str) -> None:
    """What a fresh deploy must show: `jiji-net ready` everywhere, names forwarded, and with an
    engine, a container on lab0 found by name from lab2."""
    for i in range(3):
        assert "exit=0" in ready(lab, i), ready(lab, i)
        assert "198.18.0.200" in lab.run(i, f"dig +short +time=1 +tries=2 @{MESH[i]} www.lab.test")
    if e == "none":
        return
    api(lab, 0, engine=e)
    address = container_ip(lab, 0, e)
    wait_until(lambda: answers(lab, 2) == [address], 15, f"lab2 answers {NAME} with lab0's {e} container")
    lab.run(0, f"{e} rm -f api >/dev/null")
    wait_until(lambda: answers(lab, 2) == [], 15, f"lab2 forgets {NAME}")


def test_engine_switches_leave_nothing_of_the_old_engine(lab: Lab, engine: RealEngine) -> None:
    with_docker(lab)
    for i in range(3):
        subprocess.run(["bash", str(lab.script), "image", str(i), "docker"], check=True, capture_output=True, timeout=120)
    found = snapshot(lab)
    engine.up(config(lab, 3, container_engine="docker"))
    works(lab, "docker")
    fresh = {"docker": snapshot(lab)}

    # A switch while docker still runs a container on `jiji` is refused, and nothing changes.
    api(lab, 1, engine="docker")
    with pytest.raises(CommandFailed) as refused:
        engine.up(config(lab, 3, container_engine="podman"))
    assert "container_engine changes from docker to podman, but docker still has containers on its network jiji" in str(
        refused.value
    )
    lab.run(1, "docker rm -f api >/dev/null")
    same_as(fresh["docker"], lab, "after the refused switch")

    switched = {}
    for e in ("podman", "none", "docker"):
        engine.up(config(lab, 3, container_engine=e))
        works(lab, e)
        switched[e] = snapshot(lab)
        for i in range(3):
            for other in {"docker", "podman"} - {e}:
                assert lab.run(i, f"{other} network inspect jiji >/dev/null 2>&1; echo $?").strip() != "0", (i, other)
            units = lab.run(i, "systemctl list-units --all --no-legend --plain 'jiji*'")
            assert ("jiji-registrar" in units) == (e != "none"), units
    same_as(fresh["docker"], lab, "switched back to docker, against its fresh deploy")
    engine.destroy()
    same_as(found, lab, "after destroy")

    # A switch leaves what a fresh deploy of the new engine makes, and nothing else.
    for e in ("podman", "none"):
        engine.up(config(lab, 3, container_engine=e))
        same_as(switched[e], lab, f"switched to {e}, against a fresh {e} deploy")
        engine.destroy()
        same_as(found, lab, f"after destroying {e}")
    print("\nswitches docker -> podman -> none -> docker: each as a fresh deploy of that engine; destroy as found;"
          " a switch with a container on jiji refused")


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
        f"podman run -d --name load --network jiji --cap-add NET_RAW {IMAGE} sh -c"
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
        "systemd-run --quiet --unit jiji-test-listener python3 -c \"$(cat)\"",
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
