"""Real containers on three lab hosts: podman and docker from Debian's packages (docker with crun
as its runtime, lab/lab.sh lab_docker says why), the lab's local busybox image (`lab/lab.sh image
I ENGINE`), the program with that `container_engine`, through the real Pulumi engine
(tests/engines.py; the test prints which CLI and provider ran). The registrar on each
server puts its containers in the registry; clients in containers on other servers find them by
name, reach them with their own addresses, and stop finding them when they stop or turn unhealthy.
Switches of engine in every direction leave nothing of the old one.
"""

from __future__ import annotations

import json
import re
import select
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Lab, module_lab
from tests.engines import CommandFailed, RealEngine, make_engine
from tests.harness import wait_until
from tests.prometheus_lab import INTERVAL, LabPrometheus, targets_file
from tests.test_mesh_on_lab import REPLICATED, SNAPSHOT, assert_unchanged, config, ready

pytestmark = pytest.mark.corrosion

IMAGE = "localhost/jiji-lab:1"
NAME = "myapp-api.jiji"
MESH = {i: f"10.210.{i}.1" for i in range(3)}
CLIENT_IP = "10.210.1.50"
ROUNDS = 20
# The host as found, leaving out what belongs to the engine and its user: podman's image and
# container storage, and netavark's base chains (NETAVARK_FORWARD, NETAVARK-HOSTPORT-*), which
# netavark makes for the first container on any network and keeps. The `jiji` network's own
# chain (NETAVARK-<id>) must be gone.
HOST_AS_FOUND = SNAPSHOT.replace("-path /etc/ssh \\)", "-path /etc/ssh -o -path /var/lib/containers \\)").replace(
    "iptables -S; iptables -t nat -S",
    "{ iptables -S; iptables -t nat -S; } | grep -Ev 'NETAVARK_FORWARD|NETAVARK-HOSTPORT'",
)
assert HOST_AS_FOUND.count("NETAVARK") == 2 and "/var/lib/containers" in HOST_AS_FOUND
# With docker running: its storage too, and its own chains are there before the deploy.
DOCKER_AS_FOUND = HOST_AS_FOUND.replace(
    "-o -path /var/lib/containers", "-o -path /var/lib/containers -o -path /var/lib/docker -o -path /var/lib/containerd"
)
assert "/var/lib/docker " in DOCKER_AS_FOUND
# /etc/docker/daemon.json as each host has it before the deploy: absent, empty, with other keys.
DAEMON_JSON = {0: None, 1: "", 2: '{\n  "log-level": "warn"\n}\n'}


def api(lab: Lab, i: int, health: str = "wget -qO- http://127.0.0.1:8080/", e: str = "podman") -> str:
    """An `api` container of project myapp on host i's jiji network, with a health check every second."""
    lab.run(i, f"{e} rm -f api >/dev/null 2>&1 || true")
    return lab.run(
        i,
        f"{e} run -d --name api --network jiji --label jiji.project=myapp --label jiji.service=api"
        f" --health-cmd '{health}' --health-interval 1s --health-retries 1 --health-timeout 1s"
        f" {IMAGE} /bin/httpd -f -v -p 8080 -h /www",
    ).strip()


def container_ip(lab: Lab, i: int, e: str = "podman") -> str:
    return lab.run(i, f"{e} inspect api --format '{{{{.NetworkSettings.Networks.jiji.IPAddress}}}}'").strip()


def bridge_of(lab: Lab, i: int, e: str) -> str:
    """The bridge of engine e's `jiji` network on host i."""
    field = "{{.NetworkInterface}}" if e == "podman" else '{{index .Options "com.docker.network.bridge.name"}}'
    return lab.run(i, f"{e} network inspect jiji --format '{field}'").strip()


def has_network(lab: Lab, i: int, e: str) -> bool:
    return lab.run(i, f"{e} network inspect jiji >/dev/null 2>&1; echo $?").strip() == "0"


def with_docker(lab: Lab) -> None:
    """Docker running on every host, each with its daemon.json as DAEMON_JSON says, and the lab
    image. dockerd refuses to start with an empty file (moby#41268), so that host's file is
    emptied once dockerd runs."""
    for i, text in DAEMON_JSON.items():
        lab.run(i, "rm -f /etc/docker/daemon.json")
        if text:
            lab.run(i, "mkdir -p /etc/docker && cat > /etc/docker/daemon.json", stdin=text)
        lab.run(i, "systemctl reset-failed docker 2>/dev/null; systemctl start docker")
        runtime = lab.run(i, "docker info --format '{{.DefaultRuntime}}'").strip()
        assert runtime == "crun-nocg", f"lab{i}'s dockerd runs {runtime}"
        if text == "":
            lab.run(i, "mkdir -p /etc/docker && : > /etc/docker/daemon.json")
        subprocess.run(["bash", str(lab.script), "image", str(i), "docker"], check=True, capture_output=True, timeout=120)


def daemon_json(lab: Lab, i: int) -> str | None:
    out = lab.run(i, "cat /etc/docker/daemon.json 2>/dev/null || echo ABSENT")
    return None if out == "ABSENT\n" else out


def answers(lab: Lab, i: int) -> list[str]:
    return sorted(lab.run(i, f"dig +short +time=1 +tries=1 @{MESH[i]} {NAME}", check=False).split())


def seconds_until_gone(lab: Lab, act_on: int, act: str, watch: int, address: str, timeout: float = 10) -> float:
    """Runs `act` on host `act_on` and returns the seconds until host `watch`'s jiji-dns stops
    answering `address`. The hosts share this machine's clock, so both ends time themselves."""
    poll = (
        f"echo polling; end=$(($(date +%s) + {int(timeout)})); while [ $(date +%s) -lt $end ]; do"
        f" dig +short +time=1 +tries=1 @{MESH[watch]} {NAME} | grep -qx {address} || {{ date +%s.%N; exit 0; }};"
        f" sleep 0.02; done; echo timeout"
    )
    watcher = subprocess.Popen(
        ["bash", str(lab.script), "ssh", str(watch), poll], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        # Acting before the watcher's SSH session polls would count the session's start as delay.
        assert watcher.stdout is not None
        ready, _, _ = select.select([watcher.stdout], [], [], 30)
        assert ready and watcher.stdout.readline().strip() == "polling", "the watcher did not start"
        assert address in answers(lab, watch), f"{address} was not answered before the change"
        started = float(lab.run(act_on, f"date +%s.%N; {act} >/dev/null").split()[0])
        out, err = watcher.communicate(timeout=timeout + 30)
    finally:
        watcher.kill()
    assert out.strip() != "timeout", f"host {watch} still answers {address} {timeout} s after: {act}"
    return float(out.split()[0]) - started


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    labs = module_lab(3, containers=True)
    instance = next(labs)
    try:
        for i in range(3):
            subprocess.run(["bash", str(instance.script), "image", str(i)], check=True, capture_output=True, timeout=120)
        yield instance
    finally:
        next(labs, None)  # the lab goes down


def found_by_name(lab: Lab, e: str) -> str:
    """The checks of a deploy with engine e: containers on lab0 and lab2 found by name from lab1,
    reached with their own addresses, gone from DNS when killed or unhealthy (20 rounds, p50 and
    p99 printed), and reconciled after the registrar was down. Returns lab0's api's address (the
    container is left there, unhealthy)."""
    for i in range(3):
        assert bridge_of(lab, i, e) == "jiji-br0"

    # An api container on lab0 and on lab2; DNS on lab1 answers both.
    api(lab, 0, e=e), api(lab, 2, e=e)
    api0, api2 = container_ip(lab, 0, e), container_ip(lab, 2, e)
    assert api0.startswith("10.210.0.") and api2.startswith("10.210.2."), (api0, api2)
    both = sorted([api0, api2])
    wait_until(lambda: answers(lab, 1) == both, 15, f"lab1 answers {NAME} with {both}")

    # A client container on lab1 reaches the service by name, and lab0 sees its own address.
    client = f"{e} run --rm --network jiji --ip {CLIENT_IP} {IMAGE}"
    page = lab.run(1, f"{client} wget -qO- http://{NAME}:8080/").strip()
    assert page in ("lab0", "lab2"), page
    assert lab.run(1, f"{client} wget -qO- http://{api0}:8080/").strip() == "lab0"
    log = lab.run(0, f"{e} logs api 2>&1")
    assert f"{CLIENT_IP}]" in log, f"lab0's api did not see the client's own address:\n{log[-2000:]}"
    # The client resolves through jiji-dns: its resolver is its server's mesh address (with
    # docker, the embedded resolver, which forwards to the daemon's `dns`: that address).
    if e == "podman":
        assert f"nameserver {MESH[1]}" in lab.run(1, f"{client} cat /etc/resolv.conf")
    else:
        assert "nameserver 127.0.0.11" in lab.run(1, f"{client} cat /etc/resolv.conf")
        assert json.loads(lab.run(1, "cat /etc/docker/daemon.json"))["dns"] == [MESH[1]]

    # Restarting the network unit (the firewall refilled) detaches nothing: lab0's api still serves.
    lab.run(0, "systemctl restart jiji-net-network")
    assert container_ip(lab, 0, e) == api0
    assert lab.run(1, f"{client} wget -qO- http://{api0}:8080/").strip() == "lab0"

    # A container on the engine's default network keeps DNS: forwarded names resolve, through jiji-dns.
    other = lab.run(1, f"{e} run --rm {IMAGE} nslookup www.lab.test", check=False)
    assert "198.18.0.200" in other, f"a container off the jiji network lost DNS:\n{other}"

    # Stopping lab0's container takes its address out of lab1's answers; starting it puts it back.
    latencies = []
    for _ in range(ROUNDS):
        latencies.append(seconds_until_gone(lab, 0, f"{e} kill api", 1, api0))
        lab.run(0, f"{e} start api >/dev/null")
        api0 = container_ip(lab, 0, e)  # a restarted container may get a new address
        wait_until(lambda a=api0: a in answers(lab, 1), 20, f"lab0's api back in lab1's answers at {api0}")
    latencies.sort()
    p50, p99 = statistics.median(latencies), latencies[-1]  # 20 rounds: p99 is the largest
    print(f"{e}: container stopped -> gone from another server's DNS, {ROUNDS} rounds: p50 {p50:.3f} s, p99 {p99:.3f} s")
    assert p99 <= 2.0, latencies

    # A failing health check does the same.
    unhealthy = seconds_until_gone(lab, 0, f"{e} exec api rm /www/index.html", 1, api0)
    print(f"{e}: health check failing -> gone from another server's DNS: {unhealthy:.2f} s")
    assert lab.run(0, f"{e} inspect api --format '{{{{.State.Health.Status}}}}'").strip() == "unhealthy"

    # The registrar down while lab2's container is removed: its next start reconciles the row away.
    lab.run(2, f"systemctl stop jiji-registrar && {e} rm -f api >/dev/null")
    time.sleep(1)
    assert api2 in answers(lab, 1), "the row went before the registrar was back (nothing reconciled)"
    started = time.monotonic()
    lab.run(2, "systemctl start jiji-registrar")
    wait_until(lambda: api2 not in answers(lab, 1), 15, "lab2's removed container gone after the registrar's start")
    print(f"{e}: registrar restarted -> removed container's row gone: {time.monotonic() - started:.2f} s")
    return api0


def switch_refused(lab: Lab, engine: RealEngine, old: str, new: str) -> None:
    """An up from engine `old` to `new` while a container uses old's `jiji` network: refused,
    naming the engine, with no network step or gate run, and every server still on `old`."""
    try:
        engine.up(config(lab, 3, container_engine=new))
        raise AssertionError(f"a switch away from {old} with a container on jiji went through")
    except CommandFailed as refused:
        assert f"{old} still has containers on its network jiji" in str(refused), str(refused)[-3000:]
        assert not {n for op, n in refused.actions if n.endswith(("-network", "-engine-gate"))}, refused.actions
    for i in range(3):
        assert lab.run(i, "cat /var/lib/jiji-net/network-engine").strip() == old, f"lab{i} switched"


def test_podman_containers_found_by_name_across_servers(lab: Lab) -> None:
    for i in range(3):
        lab.run(i, "podman --version")  # the engine is installed, as a user's server would have it
    before = {i: lab.run(i, HOST_AS_FOUND) for i in range(3)}
    engine = make_engine("containers")
    try:
        engine.up(config(lab, 3, container_engine="podman"))
        api0 = found_by_name(lab, "podman")

        # A switch of engine while lab0's api is on podman's jiji network: refused by lab0's host
        # step, and no server switched (before the gate, lab1 and lab2 switched and lab0 did not).
        switch_refused(lab, engine, "podman", "none")
        for i in range(3):
            assert lab.run(i, "podman network exists jiji; echo $?").strip() == "0", f"lab{i} lost podman's jiji"
        assert container_ip(lab, 0) == api0

        # With the container gone the switch goes through everywhere, and back again.
        lab.run(0, "podman rm -f api >/dev/null")
        engine.up(config(lab, 3, container_engine="none"))
        for i in range(3):
            assert lab.run(i, "cat /var/lib/jiji-net/network-engine").strip() == "none"
            assert lab.run(i, "podman network exists jiji; echo $?").strip() == "1"
            assert lab.run(i, "ls /etc/containers/containers.conf.d/50-jiji-net.conf 2>&1; true").strip().endswith(
                "No such file or directory"
            )
            assert lab.run(i, "ip -o link show jiji-br0 >/dev/null && echo bridge").strip() == "bridge"
        engine.up(config(lab, 3, container_engine="podman"))
        for i in range(3):
            assert lab.run(i, "podman network inspect jiji --format '{{.NetworkInterface}}'").strip() == "jiji-br0"
            wait_until(lambda i=i: "exit=0" in ready(lab, i), REPLICATED, f"lab{i} ready after the switches")

        engine.destroy()
        for i in range(3):
            assert lab.run(i, "podman network exists jiji; echo $?").strip() == "1"
            assert_unchanged(before[i], lab.run(i, HOST_AS_FOUND), f"lab{i} after destroy")
    finally:
        for i in range(3):
            lab.run(i, "podman rm -af >/dev/null 2>&1; true", check=False)
        engine.close()


RESTARTS = 100
PROBE_PORT = 8999  # on lab0's mesh address: not DNS, not in container_host_ports, so dropped for containers
# A container's connection attempts to the probe port, about 100 a second (each in the background,
# giving up after 1 s), and DNS questions to its server's jiji-dns; bounded in count and time.
PROBE_LOOP = (
    "i=0; end=$(($(date +%s) + {seconds})); while [ $i -lt {count} ] && [ $(date +%s) -lt $end ]"
    " && [ ! -e /tmp/stop ]; do nc -w 1 {address} {port} </dev/null >/dev/null 2>&1 & usleep 10000; i=$((i + 1));"
    " done; echo sent=$i"
)
# One ping a 0.2 s to lab1 over the mesh (Debian's busybox-static has no pkill to stop a long one).
PING_LOOP = (
    "sent=0; got=0; end=$(($(date +%s) + {seconds})); while [ $(date +%s) -lt $end ] && [ ! -e /tmp/stop ]; do"
    " if ping -c 1 -W 1 {address} >/dev/null 2>&1; then got=$((got + 1)); fi; sent=$((sent + 1)); usleep 200000;"
    " done; echo ping_sent=$sent ping_received=$got"
)
DNS_LOOP = (
    "ok=0; bad=0; end=$(($(date +%s) + {seconds})); while [ $((ok + bad)) -lt {count} ] && [ $(date +%s) -lt $end ]"
    " && [ ! -e /tmp/stop ]; do if nslookup www.lab.test {address} >/dev/null 2>&1; then ok=$((ok + 1));"
    " else bad=$((bad + 1)); fi; done; echo dns_ok=$ok dns_failed=$bad"
)
# Counts the connections that reach the probe port from the container subnet (runs on the host).
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


def leaks(lab: Lab) -> int:
    return int(lab.run(0, "cat /run/jiji-test-leaks 2>/dev/null || echo 0").strip())


def restarts_under_load(lab: Lab) -> dict[str, int]:
    """RESTARTS restarts of the network unit on lab0 while a container there connects to a port
    the firewall drops for containers, asks DNS, and pings lab1: what got through, how DNS fared."""
    baseline = leaks(lab)
    seconds, count = 240, 200_000
    probe = PROBE_LOOP.format(seconds=seconds, count=count, address=MESH[0], port=PROBE_PORT)
    dns = DNS_LOOP.format(seconds=seconds, count=count, address=MESH[0])
    ping = PING_LOOP.format(seconds=seconds, address=MESH[1])
    lab.run(
        0,
        f"podman run -d --name load --network jiji --cap-add NET_RAW {IMAGE} sh -c"
        f" '( {probe} ) > /tmp/probe.out & ( {dns} ) > /tmp/dns.out & ( {ping} ) > /tmp/ping.out & wait'",
    )
    try:
        time.sleep(2)
        started = time.monotonic()
        # reset-failed: systemd allows 5 starts in 10 s (StartLimitBurst), and these are ours.
        lab.run(
            0, f"for i in $(seq {RESTARTS}); do systemctl reset-failed jiji-net-network; systemctl restart jiji-net-network; done"
        )
        took = time.monotonic() - started
        time.sleep(2)
        lab.run(0, "podman exec load touch /tmp/stop")
        wait_until(lambda: "exited" in lab.run(0, "podman inspect load --format '{{.State.Status}}'"), 30, "load ends")
        out = lab.run(
            0,
            "for f in probe dns ping; do podman cp load:/tmp/$f.out - | tar -xO; done",
        )
    finally:
        lab.run(0, "podman rm -f load >/dev/null 2>&1; true", check=False)
    numbers = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", out)}
    assert all(numbers.get(k, 0) > 0 for k in ("sent", "dns_ok", "ping_sent")), out
    return {**numbers, "leaked": leaks(lab) - baseline, "seconds": int(took)}


def test_the_firewall_holds_through_network_unit_restarts(lab: Lab) -> None:
    """The network unit refills its chains in one iptables-restore per table and has no ExecStop:
    a restart never leaves a container a moment with the host open to it."""
    engine = make_engine("firewall")
    try:
        engine.up(config(lab, 3, container_engine="podman"))
        lab.run(
            0,
            'systemd-run --quiet --unit jiji-test-listener python3 -c "$(cat)"',
            stdin=LISTENER.format(address=MESH[0], port=PROBE_PORT, subnet="10.210.0."),
        )
        # The probe can see a leak: without the firewall's jump, a container's connection arrives.
        lab.run(0, "iptables -D INPUT -j JIJI-INPUT")
        lab.run(0, f"podman run --rm --network jiji {IMAGE} nc -w 1 {MESH[0]} {PROBE_PORT} </dev/null", check=False)
        wait_until(lambda: leaks(lab) > 0, 5, "the listener counts a connection from a container")
        lab.run(0, "systemctl restart jiji-net-network")

        held = restarts_under_load(lab)
        print(f"\n{RESTARTS} restarts of jiji-net-network in {held['seconds']} s under load: {held}")
        assert held["leaked"] == 0, held
        assert held["dns_failed"] == 0, held
        # The old unit stopped with `down` (every rule removed) before each start: the same
        # restarts with that ExecStop put back show what this test catches.
        drop_in = "/run/systemd/system/jiji-net-network.service.d"
        lab.run(
            0,
            f"mkdir -p {drop_in} && printf '[Service]\\nExecStop=/usr/local/lib/jiji-net/network.sh down\\n'"
            f" > {drop_in}/old.conf && systemctl daemon-reload",
        )
        try:
            old = restarts_under_load(lab)
        finally:
            lab.run(0, f"rm -rf {drop_in} && systemctl daemon-reload && systemctl restart jiji-net-network")
        print(f"the same with the old stop (rules removed, then refilled): {old}")
        assert old["leaked"] > 0, old
    finally:
        lab.run(0, "systemctl stop jiji-test-listener 2>/dev/null; rm -f /run/jiji-test-leaks*; true", check=False)
        for i in range(3):
            lab.run(i, "podman rm -af >/dev/null 2>&1; true", check=False)
        try:
            engine.destroy()
        finally:
            engine.close()


def destroyed_as_found(lab: Lab, engine: RealEngine, before: dict[int, str]) -> None:
    """Destroy leaves every host with docker as found: no `jiji` network, the snapshot as before,
    daemon.json byte for byte."""
    engine.destroy()
    for i in range(3):
        assert not has_network(lab, i, "docker"), f"lab{i} kept docker's jiji network"
        assert_unchanged(before[i], lab.run(i, DOCKER_AS_FOUND), f"lab{i} after destroy")
        assert daemon_json(lab, i) == DAEMON_JSON[i], f"lab{i}'s daemon.json is not as found"


def test_docker_containers_found_by_name_across_servers(lab: Lab) -> None:
    """The same as with podman; dockerd's daemon.json is absent on lab0, empty on lab1 and has a
    key of the user's on lab2, and destroy leaves each as found, byte for byte."""
    with_docker(lab)
    before = {i: lab.run(i, DOCKER_AS_FOUND) for i in range(3)}
    engine = make_engine("containers-docker")
    try:
        engine.up(config(lab, 3, container_engine="docker"))
        for i in range(3):
            merged = json.loads(lab.run(i, "cat /etc/docker/daemon.json"))
            assert merged == {**json.loads(DAEMON_JSON[i] or "{}"), "dns": [MESH[i]]}, (i, merged)
        found_by_name(lab, "docker")
        lab.run(0, "docker rm -f api >/dev/null")
        destroyed_as_found(lab, engine, before)
    finally:
        for i in range(3):
            lab.run(i, "docker ps -aq | xargs -r docker rm -f >/dev/null 2>&1; true", check=False)
        engine.close()


def deployed(lab: Lab, e: str) -> None:
    """What a fresh deploy with engine e shows: every server ready; with an engine, a container
    on lab0 found by name from a container on lab2; and nothing of the other engines: no `jiji`
    network of theirs, podman's drop-in only with podman, daemon.json as found unless docker."""
    for i in range(3):
        assert lab.run(i, "cat /var/lib/jiji-net/network-engine").strip() == e
        wait_until(lambda i=i: "exit=0" in ready(lab, i), REPLICATED, f"lab{i} ready with {e}")
        if e != "podman":  # netavark makes podman's bridge when the first container starts
            assert lab.run(i, "ip -o link show jiji-br0 >/dev/null && echo bridge").strip() == "bridge"
        for other in {"docker", "podman"} - {e}:
            assert not has_network(lab, i, other), f"lab{i} kept {other}'s jiji network after the switch to {e}"
        drop_in = lab.run(i, "test -e /etc/containers/containers.conf.d/50-jiji-net.conf; echo $?").strip() == "0"
        assert drop_in == (e == "podman"), f"lab{i}: podman's drop-in {'missing' if e == 'podman' else 'left'}"
        if e == "docker":
            assert json.loads(lab.run(i, "cat /etc/docker/daemon.json"))["dns"] == [MESH[i]]
        else:
            assert daemon_json(lab, i) == DAEMON_JSON[i], f"lab{i}'s daemon.json is not as found with {e}"
    if e == "none":
        return
    for i in range(3):
        assert bridge_of(lab, i, e) == "jiji-br0"
    api(lab, 0, e=e)
    address = container_ip(lab, 0, e)
    wait_until(lambda: answers(lab, 2) == [address], 15, f"lab2 answers {NAME} with lab0's {e} container")
    page = lab.run(2, f"{e} run --rm --network jiji {IMAGE} wget -qO- http://{NAME}:8080/").strip()
    assert page == "lab0", page
    lab.run(0, f"{e} rm -f api >/dev/null")
    wait_until(lambda: answers(lab, 2) == [], 15, f"lab0's removed {e} container gone from lab2's answers")


def as_deployed(lab: Lab, i: int) -> str:
    """Host i with a mesh deployed, to compare two deploys: DOCKER_AS_FOUND without the registry's
    own data (Corrosion adds subscription files as jiji-dns restarts), links and addresses sorted
    (a bridge made again gets a higher interface index)."""
    snapshot = lab.run(i, DOCKER_AS_FOUND.replace("-path /var/lib/docker", "-path /var/lib/jiji -o -path /var/lib/docker"))
    sections = snapshot.split("--\n")
    sections[1] = "".join(sorted(sections[1].splitlines(keepends=True)))
    return "--\n".join(sections)


def test_engine_switches_leave_nothing_of_the_old_engine(lab: Lab) -> None:
    """docker -> podman -> none -> docker on the running lab, each checked as a fresh deploy; back
    on docker, every host is as it was after the first docker deploy (nothing of podman or of the
    plain bridge left), and a switch is refused on every server while a container uses the old
    engine's network."""
    with_docker(lab)
    before = {i: lab.run(i, DOCKER_AS_FOUND) for i in range(3)}
    engine = make_engine("switches")
    try:
        engine.up(config(lab, 3, container_engine="docker"))
        deployed(lab, "docker")
        first = {i: as_deployed(lab, i) for i in range(3)}

        api(lab, 1, e="docker")
        switch_refused(lab, engine, "docker", "podman")
        lab.run(1, "docker rm -f api >/dev/null")

        for e in ("podman", "none", "docker"):
            started = time.monotonic()
            engine.up(config(lab, 3, container_engine=e))
            print(f"switch to {e}: up in {time.monotonic() - started:.1f} s")
            deployed(lab, e)
        for i in range(3):
            assert_unchanged(first[i], as_deployed(lab, i), f"lab{i} back on docker after podman and none")

        destroyed_as_found(lab, engine, before)
    finally:
        for i in range(3):
            lab.run(i, "for e in docker podman; do $e ps -aq | xargs -r $e rm -f; done >/dev/null 2>&1; true", check=False)
        engine.close()


def from_a_container(lab: Lab, address: str, port: int) -> str:
    """What a container on lab0's jiji network gets for GET /metrics at address:port (busybox nc,
    3 s to connect; not `wget -T`, which crashes in the lab image's busybox and so would look like
    a refusal)."""
    request = r"printf 'GET /metrics HTTP/1.0\r\n\r\n'"
    return lab.run(
        0, f"timeout 60 podman run --rm --network jiji {IMAGE} sh -c \"{request} | nc -w 3 {address} {port}\"", check=False
    )


def from_the_underlay(lab: Lab, address: str, port: int) -> str:
    """What a machine on the lab's underlay (the resolver's namespace) gets when it routes the
    mesh address to lab0."""
    underlay = ["ip", "netns", "exec", "jiji-lab-dns"]
    subprocess.run([*underlay, "ip", "route", "replace", f"{address}/32", "via", lab.ip(0)], check=True, timeout=30)
    try:
        return subprocess.run(
            [*underlay, "curl", "-s", "--max-time", "2", f"http://{address}:{port}/metrics"],
            capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
    finally:
        subprocess.run([*underlay, "ip", "route", "del", f"{address}/32"], check=False, timeout=30)


def scrape_cpu_ms(lab: Lab, i: int, unit: str, port: int, scrapes: int = 20) -> float:
    """CPU per scrape of `unit` on host i: user+system time of its main process, of the commands
    it ran and waited for, and of its children still running (jiji-dns's workers), around
    `scrapes` scrapes from the host itself. (The lab's systemd keeps no CPU accounting.)"""
    ticks = (
        f"main=$(systemctl show -p MainPID --value {unit}); for p in $main"
        " $(awk -v m=$main '$4 == m {print $1}' /proc/[0-9]*/stat 2>/dev/null); do"
        " awk '{print $14 + $15 + $16 + $17}' /proc/$p/stat; done | awk '{s += $1} END {print s + 0}'"
    )
    hz = int(lab.run(i, "getconf CLK_TCK"))
    before = int(lab.run(i, ticks))
    lab.run(i, f"for n in $(seq {scrapes}); do busybox wget -q -O /dev/null http://{MESH[i]}:{port}/metrics; done")
    return (int(lab.run(i, ticks)) - before) / hz / scrapes * 1000


def test_prometheus_on_the_mesh_sees_queries_containers_and_drift(lab: Lab, tool: Path, tmp_path: Path) -> None:
    """A real Prometheus on lab0 scrapes every server over jiji0 with the targets `jiji-net
    prometheus targets` wrote: every target up; N queries to lab1 raise its counter by N; a
    container killed on lab0 lowers its healthy gauge; a hand edit on lab2 is drift that `ready`
    names and `repair` undoes; the endpoints refuse containers and the underlay."""
    before = {i: lab.run(i, HOST_AS_FOUND) for i in range(3)}
    engine = make_engine("monitoring")
    prom = None
    try:
        run = engine.up(config(lab, 3, container_engine="podman"))
        prom = LabPrometheus(0, targets_file(tool, run.outputs, tmp_path), tmp_path)
        wanted = {f"{MESH[i]}:{port}" for i in range(3) for port in (9480, 9481)}
        wait_until(lambda: prom.targets_up() == dict.fromkeys(wanted, "up"), 30, "every target up")

        # N queries to lab1: its query counter rises by exactly N.
        queries = 'sum(jiji_dns_queries_total{server="lab1"})'
        wait_until(lambda: prom.value(queries) is not None, 10, "lab1's query counter")
        time.sleep(2 * INTERVAL)
        start = prom.value(queries)
        assert start is not None
        n = 17
        lab.run(1, f"for i in $(seq {n}); do dig +short +time=1 +tries=1 @{MESH[1]} nothing-{n}.jiji >/dev/null; done")
        wait_until(lambda: prom.value(queries) == start + n, 5 * INTERVAL, f"lab1's counter up by {n}")
        time.sleep(2 * INTERVAL)
        assert prom.value(queries) == start + n, "more than the test's queries were counted"

        # What a scrape costs each exporter on lab0 (CPU of the process and the commands it runs).
        for unit, port in (("jiji-metrics", 9480), ("jiji-dns", 9481)):
            print(f"{unit} scrape on lab0: {scrape_cpu_ms(lab, 0, unit, port):.1f} ms of CPU each (20 scrapes)")

        # A container killed on lab0: its healthy gauge goes down.
        api(lab, 0)
        healthy = 'jiji_containers{server="lab0",health="healthy"}'
        wait_until(lambda: prom.value(healthy) == 1, 30, "lab0's healthy container in Prometheus")
        lab.run(0, "podman kill api >/dev/null")
        wait_until(lambda: (prom.value(healthy) or 0) == 0, 30, "lab0's healthy gauge down")

        # Metrics are for the servers: not from a container on lab0, nor from the underlay (a
        # neighbour routing the mesh address to lab0). The probes can see a leak: with the rules
        # that drop them deleted, both get metrics; the network unit's restart puts the rules back.
        bridge = bridge_of(lab, 0, "podman")
        lab.run(0, f"iptables -D JIJI-INPUT -i {bridge} -j DROP")
        lab.run(0, f"iptables -D JIJI-INPUT -d {MESH[0]}/32 -p tcp -m multiport --dports 9480,9481 -j DROP")
        try:
            leak = from_a_container(lab, MESH[0], 9480)
            assert "jiji_" in leak, f"the container probe cannot see a leak: {leak[-500:]}\n" + lab.run(0, "iptables -S; iptables -t nat -S")
            assert "jiji_" in from_the_underlay(lab, MESH[0], 9480), "the underlay probe cannot see a leak"
        finally:
            lab.run(0, "systemctl restart jiji-net-network")
        for address, port in ((MESH[0], 9480), (MESH[0], 9481), (MESH[1], 9480)):
            assert "jiji_" not in from_a_container(lab, address, port), (address, port)
        for port in (9480, 9481):
            assert "jiji_" not in from_the_underlay(lab, MESH[0], port), port

        # Drift on lab2: a line in jiji0.conf, jiji-dns stopped, a rule gone from our chain.
        wait_until(lambda: "exit=0" in ready(lab, 2), REPLICATED, "lab2 ready before the hand edit")
        # What the program applied; jiji-dns's Corrosion subscriptions (new ones after its restart)
        # are the registry's data, not the program's.
        def applied() -> str:
            return "\n".join(line for line in lab.run(2, SNAPSHOT).splitlines() if "/corrosion/subscriptions/" not in line)

        as_applied = applied()
        rule = lab.run(2, "iptables -S JIJI-INPUT | sed -n 2p").strip()
        lab.run(2, "echo '# a hand edit' >> /etc/wireguard/jiji0.conf; systemctl stop jiji-dns")
        lab.run(2, f"iptables {rule.replace('-A ', '-D ', 1)}")
        said = ready(lab, 2)
        assert "exit=0" not in said, said
        for thing in ("/etc/wireguard/jiji0.conf", "jiji-dns", "JIJI-INPUT"):
            assert thing in said, (thing, said)
        drift = 'sum(jiji_drift_items{server="lab2"})'
        wait_until(lambda: prom.value(drift) == 3, 10 * INTERVAL, "lab2's drift in Prometheus")
        lab.run(2, "jiji-net repair")
        wait_until(lambda: "exit=0" in ready(lab, 2), REPLICATED, "lab2 ready after repair")
        assert_unchanged(as_applied, applied(), "lab2 after repair")
        wait_until(lambda: prom.value(drift) == 0, 10 * INTERVAL, "lab2's drift cleared in Prometheus")
    finally:
        if prom is not None:
            prom.close()
        for i in range(3):
            lab.run(i, "podman rm -af >/dev/null 2>&1; true", check=False)
        try:
            engine.destroy()
        finally:
            engine.close()
    for i in range(3):
        assert_unchanged(before[i], lab.run(i, HOST_AS_FOUND), f"lab{i} after destroy")
