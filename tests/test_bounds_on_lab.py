"""The smallest and the largest value of every setting the program checks and a host component
checks again (tests/test_bounds.py holds the list against the daemon's parser), deployed on two
lab hosts through the real engine: each server is ready, answers a registered name and forwards
the rest, over the mesh too. WireGuard's port at both ends of the range, the shortest and longest
TTL, the smallest and largest MTU, cluster range and subnets, the shortest domain and a long one."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest

from jiji_net import plan, validation
from jiji_net.model import MeshSettings
from tests.conftest import Lab, module_lab
from tests.engines import make_engine
from tests.harness import corrosion_binary, wait_until
from tests.test_faults_on_lab import container_row
from tests.test_mesh_on_lab import REPLICATED, config, ready, write

pytestmark = pytest.mark.corrosion

SMALLEST = {
    "mtu": 1280,
    "dns_ttl": 0,
    "wireguard_port": 1,
    "container_engine": "none",
    "cluster_cidr": "10.210.0.0/29",
    "subnet_prefix_len": 30,  # the mesh address and one container per server
    "domain": "a",
}
LARGEST = {
    "mtu": 1500,
    "dns_ttl": validation.DNS_TTL_MAX,
    "wireguard_port": 65535,
    "container_engine": "none",
    "cluster_cidr": "10.0.0.0/8",
    "subnet_prefix_len": 9,
    "domain": "mesh-" + "x" * 58 + ".example",
}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    corrosion_binary()
    yield from module_lab(2)


def mesh_address(settings: dict[str, Any], i: int) -> str:
    model = MeshSettings(cluster_cidr=settings["cluster_cidr"], subnet_prefix_len=settings["subnet_prefix_len"])
    return str(plan.subnet_of(model, i)[1])


CAP_NET_BIND_SERVICE = 1 << 10


def dns_identity(lab: Lab, i: int) -> tuple[bool, int]:
    """Whether jiji-dns's main process runs as root (any uid of 0), and its effective capabilities."""
    pid = lab.run(i, "systemctl show -p MainPID --value jiji-dns").strip()
    status = dict(
        line.split(":", 1) for line in lab.run(i, f"cat /proc/{pid}/status").splitlines() if ":" in line
    )
    return "0" in status["Uid"].split(), int(status["CapEff"].strip(), 16)


@pytest.mark.parametrize("settings", [SMALLEST, LARGEST], ids=["smallest", "largest"])
def test_the_extremes_the_program_accepts_deploy_and_run(lab: Lab, settings: dict[str, Any]) -> None:
    engine = make_engine("bounds")
    try:
        engine.up(config(lab, 2, **settings))
        mesh = {i: mesh_address(settings, i) for i in range(2)}
        name = f"shop-web.{settings['domain']}"
        # A row written on lab0 is answered by lab1's jiji-dns, with the configured TTL.
        write(lab, 0, container_row("bounds", 0, str(ipaddress.ip_address(mesh[0]) + 1)))
        dig = f"dig +noall +answer +time=1 +tries=1 @{mesh[1]}"
        wait_until(lambda: name in lab.run(1, f"{dig} {name}", check=False), REPLICATED, f"lab1 answers {name}")
        answer = lab.run(1, f"{dig} {name}").split()
        assert answer[1] == str(settings["dns_ttl"]), answer
        for i in range(2):
            assert "exit=0" in ready(lab, i), ready(lab, i)
            assert dns_identity(lab, i) == (False, CAP_NET_BIND_SERVICE), "jiji-dns runs as root or with more"
            assert "198.18.0.200" in lab.run(i, f"dig +short +time=1 +tries=2 @{mesh[i]} www.lab.test")
        # Over the mesh, at the configured MTU: lab0 asks lab1's jiji-dns.
        assert "198.18.0.200" in lab.run(0, f"dig +short +time=1 +tries=2 @{mesh[1]} www.lab.test")
        assert lab.run(0, "ip -o link show jiji0").split("mtu ")[1].split()[0] == str(settings["mtu"])
    finally:
        try:
            engine.destroy()
        finally:
            engine.close()
