"""Faults on three lab hosts with a mesh up: a server rebooting, a Corrosion node that lost its
data, every upstream resolver dead. The data plane must serve its last good state and come back
by itself, with no `pulumi up`. Each prints its timing."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Lab
from tests.engines import Engine, make_engine
from tests.harness import REPO, corrosion_binary, wait_until
from tests.test_mesh_on_lab import CORROSION, MESH, config, dig, ready, write

pytestmark = pytest.mark.corrosion
ROW = [
    ["INSERT INTO services (project, name) VALUES (?, ?)", ["shop", "web"]],
    ["INSERT INTO containers (id, service, project, server_id, ip, health_status, started_at)"
     " VALUES (?, ?, ?, ?, ?, ?, ?)", ["c0", "web", "shop", "lab0", "10.210.0.2", "healthy", 1]],
]  # fmt: skip


@pytest.fixture(scope="module")
def mesh() -> Iterator[tuple[Lab, Engine]]:
    corrosion_binary()
    lab = Lab(3)
    engine = make_engine("lab-faults")
    try:
        engine.up(config(lab, 3))
        write(lab, 0, ROW)
        for i in range(3):
            wait_until(lambda i=i: dig(lab, i, MESH[i], "shop-web.jiji") == ["10.210.0.2"], 5, f"lab{i} answers")
        yield lab, engine
    finally:
        engine.destroy()
        engine.close()
        lab.down()


def test_a_rebooted_server_comes_back_by_itself(mesh: tuple[Lab, Engine]) -> None:
    lab, _ = mesh
    subprocess.run(["bash", str(REPO / "lab" / "lab.sh"), "stop", "1"], check=True, capture_output=True)
    booted = time.monotonic()
    subprocess.run(["bash", str(REPO / "lab" / "lab.sh"), "start", "1"], check=True, capture_output=True, timeout=300)
    # Until its node answers, its DNS says SERVFAIL for the domain, never NXDOMAIN.
    statuses = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = lab.run(1, f"dig +time=1 +tries=1 @{MESH[1]} shop-web.jiji", check=False)
        statuses |= {s for s in ("NXDOMAIN", "SERVFAIL", "NOERROR") if f"status: {s}" in out}
        if "10.210.0.2" in out:
            break
        time.sleep(0.2)
    assert "NXDOMAIN" not in statuses, statuses
    # A peer's first handshake after the reboot needs traffic: pings make it.
    wait_until(lambda: lab.pings(1, MESH[0]) and lab.pings(1, MESH[2]) and "exit=0" in ready(lab, 1), 90, "lab1 ready")
    seconds = time.monotonic() - booted
    print(f"\nreboot: boot to `jiji-net ready` passing: {seconds:.1f} s")
    assert dig(lab, 1, MESH[1], "shop-web.jiji") == ["10.210.0.2"]
    members = lab.run(0, f"{CORROSION} cluster members")
    assert f'"{MESH[1]}:9280"' in members
    assert "JIJI-INPUT" in lab.run(1, "iptables -S INPUT") and "jiji-br0" in lab.run(1, "ip -o link")


def test_a_node_that_lost_its_data_resyncs(mesh: tuple[Lab, Engine]) -> None:
    lab, _ = mesh
    lab.run(2, "systemctl stop jiji-corrosion && rm -rf /var/lib/jiji/corrosion/* && systemctl start jiji-corrosion")
    started = time.monotonic()
    wait_until(lambda: lab.run(2, f"{CORROSION} query 'SELECT count(*) FROM servers'", check=False).strip() == "3",
               60, "lab2's node has the servers again")  # fmt: skip
    wait_until(lambda: dig(lab, 2, MESH[2], "shop-web.jiji") == ["10.210.0.2"], 60, "lab2's DNS answers the row again")
    print(f"\nlost registry data: resynced and answered in {time.monotonic() - started:.1f} s")


def test_dead_upstreams_give_servfail_in_time_and_jiji_names_still_answer(mesh: tuple[Lab, Engine]) -> None:
    lab, _ = mesh
    pidfile = REPO / ".lab" / "lab" / "resolver.pid"
    subprocess.run(["kill", pidfile.read_text().strip()], check=True)
    try:
        started = time.monotonic()
        out = lab.run(0, f"dig +time=15 +tries=1 @{MESH[0]} www.lab.test", check=False)
        seconds = time.monotonic() - started
        assert "status: SERVFAIL" in out, out
        assert seconds < 5 + 3, f"SERVFAIL took {seconds:.1f} s with a 5 s upstream timeout"
        assert dig(lab, 0, MESH[0], "shop-web.jiji") == ["10.210.0.2"]
        print(f"\nall upstreams dead: SERVFAIL after {seconds:.1f} s; .jiji answered")
    finally:
        subprocess.run(["bash", str(REPO / "lab" / "lab.sh"), "up", "3"], check=True, capture_output=True, timeout=300)
    wait_until(lambda: dig(lab, 0, MESH[0], "www.lab.test") == ["198.18.0.200"], 10, "forwarding is back")
