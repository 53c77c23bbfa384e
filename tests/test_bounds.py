"""Every setting the program checks and a host component checks again: the smallest and largest
values the program accepts pass the host's own parser, one step past them the program refuses,
so no value that validates can leave a server without a working daemon. (test_bounds_on_lab.py
deploys the extremes on a lab host.)"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable

import pytest
from jiji_common import layout
from jiji_dns import config as dns_config

from jiji_net import plan, render, validation
from jiji_net.model import CorrosionSource, MeshSettings, Server
from tests.test_plan import fake_host_key

SERVER = Server(name="a", host="198.18.0.10", index=0, endpoint="198.18.0.10", host_key=fake_host_key("a"))
LONGEST_DOMAIN = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters, the most plan allows
# (setting, smallest accepted, largest accepted, what jiji-dns makes of it, other settings)
BOUNDS = [
    ("dns_ttl", 0, validation.DNS_TTL_MAX, lambda c: c.ttl, {}),
    ("api_port", 1, 65535, lambda c: c.corrosion_api.port, {}),
    # Containers ask port 53 whatever the setting says: other ports only without an engine.
    ("dns_port", 1, 65535, lambda c: c.listen[0].port, {"container_engine": "none"}),
]


def settings(**changes: object) -> MeshSettings:
    return dataclasses.replace(MeshSettings(corrosion=CorrosionSource(local_path="/bin/true")), **changes)


def problems(s: MeshSettings) -> list[str]:
    try:
        validation.validate(s, [SERVER])
    except validation.ConfigError as err:
        return err.problems
    return []


def daemon_config(s: MeshSettings) -> dns_config.Config:
    """What jiji-dns makes of the command line its rendered unit gives it."""
    unit = render.dns_unit(s, plan.plan_addresses(s, [SERVER])["a"])
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[:2] == ["/usr/bin/python3", layout.DNS_PYZ]
    return dns_config.load(argv[2:])


@pytest.mark.parametrize(("key", "low", "high", "seen", "others"), BOUNDS, ids=[b[0] for b in BOUNDS])
def test_the_programs_extremes_run_and_one_past_is_refused(
    key: str, low: int, high: int, seen: Callable[[dns_config.Config], int], others: dict[str, object]
) -> None:
    for value in (low, high):
        s = settings(**others, **{key: value})
        assert problems(s) == []
        assert seen(daemon_config(s)) == value
    for value in (low - 1, high + 1):
        found = problems(settings(**others, **{key: value}))
        assert any(p.startswith(f"{key}: {value}") for p in found), found


def test_the_daemons_ttl_limit_is_the_programs() -> None:
    assert dns_config.MAX_TTL == validation.DNS_TTL_MAX


@pytest.mark.parametrize("domain", ["a", "x-1", LONGEST_DOMAIN])
def test_every_domain_the_program_takes_the_daemon_takes(domain: str) -> None:
    s = settings(domain=domain)
    assert problems(s) == []
    assert daemon_config(s).domain == domain


@pytest.mark.parametrize("cidr", ["10.0.0.0/8", "172.16.0.0/12", "192.168.100.0/22"])
def test_the_cluster_range_is_one_the_daemon_recurses_for(cidr: str) -> None:
    s = settings(cluster_cidr=cidr, subnet_prefix_len=int(cidr.split("/")[1]) + 2)
    assert problems(s) == []
    assert any(str(n) == cidr for n in daemon_config(s).recursion_networks)


def test_two_services_on_one_port_are_refused() -> None:
    found = problems(settings(gossip_port=51820))
    assert any(p.startswith("gossip_port: 51820 is also wireguard_port") for p in found), found


def test_a_dns_port_containers_cannot_ask_is_refused_with_an_engine() -> None:
    assert any(p.startswith("dns_port: 5353 leaves containers without DNS") for p in problems(settings(dns_port=5353)))
    assert problems(settings(dns_port=5353, container_engine="none")) == []
