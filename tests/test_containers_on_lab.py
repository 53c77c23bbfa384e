"""Real containers on three lab hosts, with podman and with docker from Debian's packages (docker
with crun as its runtime, as lab/lab.sh lab_docker says why), the lab's local busybox image
(`lab/lab.sh image I ENGINE`), the program with that `container_engine`, through the real Pulumi engine
(tests/engines.py; the test prints which CLI and provider ran). The registrar on each
server puts its containers in the registry; clients in containers on other servers find them by
name, reach them with their own addresses, and stop finding them when they stop or turn unhealthy.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Lab, module_lab
from tests.engines import make_engine
from tests.harness import wait_until
from tests.test_mesh_on_lab import SNAPSHOT, assert_unchanged, config

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
# Docker's storage too (its own chains exist before the deploy: docker runs already).
DOCKER_AS_FOUND = HOST_AS_FOUND.replace("-o -path /var/lib/containers", "-o -path /var/lib/containers -o -path /var/lib/docker -o -path /var/lib/containerd")
assert "/var/lib/docker " in DOCKER_AS_FOUND
# /etc/docker/daemon.json as each host has it before the deploy: absent, empty, with other keys.
DAEMON_JSON = {0: None, 1: "", 2: '{\n  "log-level": "warn"\n}\n'}
ENGINES = ["podman", "docker"]


def api(lab: Lab, i: int, health: str = "wget -qO- http://127.0.0.1:8080/", engine: str = "podman") -> str:
    """An `api` container of project myapp on host i's jiji network, with a health check every second."""
    lab.run(i, f"{engine} rm -f api >/dev/null 2>&1 || true")
    return lab.run(
        i,
        f"{engine} run -d --name api --network jiji --label jiji.project=myapp --label jiji.service=api"
        f" --health-cmd '{health}' --health-interval 1s --health-retries 1 --health-timeout 1s"
        f" {IMAGE} /bin/httpd -f -v -p 8080 -h /www",
    ).strip()


def container_ip(lab: Lab, i: int, engine: str = "podman") -> str:
    return lab.run(i, f"{engine} inspect api --format '{{{{.NetworkSettings.Networks.jiji.IPAddress}}}}'").strip()


def with_docker(lab: Lab) -> None:
    """Docker running on every host, each with its daemon.json as DAEMON_JSON says. dockerd
    refuses to start on an empty file (moby#41268), so that host's file is emptied once it runs."""
    for i, text in DAEMON_JSON.items():
        lab.run(i, "rm -f /etc/docker/daemon.json")
        if text:
            lab.run(i, "mkdir -p /etc/docker && cat > /etc/docker/daemon.json", stdin=text)
        lab.run(i, "systemctl reset-failed docker 2>/dev/null; systemctl start docker && docker info --format '{{.DefaultRuntime}}'")
        if text == "":
            lab.run(i, "mkdir -p /etc/docker && : > /etc/docker/daemon.json")


def daemon_json(lab: Lab, i: int) -> str | None:
    out = lab.run(i, "cat /etc/docker/daemon.json 2>/dev/null || echo ABSENT")
    return None if out == "ABSENT\n" else out


def answers(lab: Lab, i: int) -> list[str]:
    return sorted(lab.run(i, f"dig +short +time=1 +tries=1 @{MESH[i]} {NAME}", check=False).split())


def seconds_until_gone(lab: Lab, act_on: int, act: str, watch: int, address: str, timeout: float = 10) -> float:
    """Runs `act` on host `act_on` and returns the seconds until host `watch`'s jiji-dns stops
    answering `address`. The hosts share this machine's clock, so both ends time themselves."""
    poll = (
        f"end=$(($(date +%s) + {int(timeout)})); while [ $(date +%s) -lt $end ]; do"
        f" dig +short +time=1 +tries=1 @{MESH[watch]} {NAME} | grep -qx {address} || {{ date +%s.%N; exit 0; }};"
        f" sleep 0.02; done; echo timeout"
    )
    watcher = subprocess.Popen(
        ["bash", str(lab.script), "ssh", str(watch), poll], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        time.sleep(0.3)  # the watcher's SSH session is up and polling
        assert address in answers(lab, watch), f"{address} was not answered before the change"
        started = float(lab.run(act_on, f"date +%s.%N; {act} >/dev/null").split()[0])
        out, err = watcher.communicate(timeout=timeout + 30)
    finally:
        watcher.kill()
    assert out.strip() != "timeout", f"host {watch} still answers {address} {timeout} s after: {act}"
    return float(out.split()[0]) - started


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from module_lab(3, containers=True)


@pytest.mark.parametrize("e", ENGINES)
def test_containers_found_by_name_across_servers(lab: Lab, e: str) -> None:
    if e == "docker":
        with_docker(lab)
    for i in range(3):
        lab.run(i, f"{e} --version")  # the engine is installed, as a user's server would have it
        subprocess.run(["bash", str(lab.script), "image", str(i), e], check=True, capture_output=True, timeout=120)
    as_found = DOCKER_AS_FOUND if e == "docker" else HOST_AS_FOUND
    before = {i: lab.run(i, as_found) for i in range(3)}
    engine = make_engine(f"containers-{e}")
    try:
        engine.up(config(lab, 3, container_engine=e))
        bridge = "{{.NetworkInterface}}" if e == "podman" else '{{index .Options "com.docker.network.bridge.name"}}'
        for i in range(3):
            assert lab.run(i, f"{e} network inspect jiji --format '{bridge}'").strip() == "jiji-br0"

        # An api container on lab0 and on lab2; DNS on lab1 answers both.
        api(lab, 0, engine=e), api(lab, 2, engine=e)
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
            api0 = container_ip(lab, 0, e)  # podman gives a restarted container a new address
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

        lab.run(0, f"{e} rm -f api >/dev/null")
        engine.destroy()
        for i in range(3):
            assert lab.run(i, f"{e} network inspect jiji >/dev/null 2>&1; echo $?").strip() != "0"
            assert_unchanged(before[i], lab.run(i, as_found), f"lab{i} after destroy")
            if e == "docker":
                assert daemon_json(lab, i) == DAEMON_JSON[i], f"lab{i}'s daemon.json is not as found"
    finally:
        for i in range(3):
            lab.run(i, f"{e} ps -aq | xargs -r {e} rm -f >/dev/null 2>&1; true", check=False)
        engine.close()
