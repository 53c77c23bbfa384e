"""Address plan, validation, endpoints and peers (pure), and rendered files against golden copies."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest

from jiji_net.model import CorrosionSource, MeshSettings, Server
from jiji_net.plan import plan_addresses
from jiji_net.render import corrosion_config
from jiji_net.validation import ConfigError, validate

GOLDEN = Path(__file__).parent / "golden"
LOCAL = CorrosionSource(local_path="/cache/corrosion")


def fake_host_key(seed: str) -> str:
    """A well-formed ssh-ed25519 public key line (wire format: type, then 32 key bytes); no host has it."""
    blob = b"".join(
        len(part).to_bytes(4, "big") + part for part in (b"ssh-ed25519", hashlib.sha256(seed.encode()).digest())
    )
    return "ssh-ed25519 " + base64.b64encode(blob).decode()


def servers(n: int = 3) -> list[Server]:
    return [
        Server(
            name=f"web{i}",
            host=f"198.18.0.{10 + i}",
            index=i,
            endpoint=f"198.18.0.{10 + i}",
            host_key=fake_host_key(f"web{i}"),
        )
        for i in range(n)
    ]


def settings(**kw: object) -> MeshSettings:
    values: dict[str, object] = {"corrosion": LOCAL, "container_engine": "none", **kw}
    return MeshSettings(**values)  # type: ignore[arg-type]


def test_server_n_gets_the_nth_subnet_and_its_first_host() -> None:
    plans = plan_addresses(
        settings(),
        [
            Server(name="a", host="h1", index=0, endpoint="203.0.113.1"),
            Server(name="b", host="h2", index=7, endpoint="203.0.113.2"),
        ],
    )
    assert plans["a"].subnet == "10.210.0.0/24" and plans["a"].mesh_address == "10.210.0.1"
    assert plans["b"].subnet == "10.210.7.0/24" and plans["b"].mesh_address == "10.210.7.1"
    assert plans["b"].container_range == "10.210.7.2-10.210.7.254"


def test_other_prefix_lengths() -> None:
    plans = plan_addresses(
        settings(cluster_cidr="10.0.0.0/8", subnet_prefix_len=20),
        [Server(name="a", host="h", index=3, endpoint="203.0.113.1")],
    )
    assert plans["a"].subnet == "10.0.48.0/20" and plans["a"].container_last == "10.0.63.254"


def test_removing_a_server_renumbers_nobody() -> None:
    before = plan_addresses(settings(), servers(4))
    after = plan_addresses(settings(), [s for s in servers(4) if s.index != 1])
    assert {k: v for k, v in before.items() if k != "web1"} == after


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"cluster_cidr": "10.210.0.0/33"}, "cluster_cidr: '10.210.0.0/33' is not a CIDR"),
        ({"cluster_cidr": "10.210.0.5/16"}, "cluster_cidr: '10.210.0.5/16' has host bits set; use '10.210.0.0/16'"),
        ({"subnet_prefix_len": 16}, "subnet_prefix_len: 16 must be longer than the cluster prefix /16"),
        ({"subnet_prefix_len": 31}, "leaves no room for containers"),
        ({"container_engine": "lxc"}, "container_engine: 'lxc' is not one of docker, podman, none"),
        ({"mtu": 9000}, "mtu: 9000 is outside 1280-1500"),
        ({"corrosion": CorrosionSource(url="https://example.invalid/c.tgz")}, "corrosion_sha256: missing"),
        ({"corrosion": CorrosionSource()}, "neither is set; set exactly one: corrosion_url with corrosion_sha256"),
    ],
)
def test_bad_settings_are_named_with_a_fix(change: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(settings(**change), servers())
    assert fragment in str(err.value)


def test_bad_servers_are_named_with_a_fix() -> None:
    bad = [
        Server(name="a", host="h1", index=0, endpoint="203.0.113.1"),
        Server(name="a", host="h1", index=0, endpoint="203.0.113.1"),
        Server(name="c", host="h3", index=300, endpoint="10.210.5.5"),
        Server(name="d", host="h4", index=4),
        Server(name="e_x", host="h5", index=5, endpoint="not-an-ip", port=70000),
    ]
    with pytest.raises(ConfigError) as err:
        validate(settings(), bad)
    text = str(err.value)
    for fragment in [
        "name 'a' is used by both",
        "index 0 is used by both",
        "host 'h1' is used by both",
        "endpoint '203.0.113.1' is used by both",
        "servers[c].index: 300 is out of range 0-255",
        "servers[c].endpoint: '10.210.5.5' is inside cluster_cidr",
        "servers[d]: neither endpoint",
        # A name that is not a label is not repeated as the server's handle: its position is.
        "servers[4].endpoint: 'not-an-ip' is not an IP address",
        "servers[4].port: 70000 is outside 1-65535",
        "servers[4].name: 'e_x' is not a lower-case DNS label",
        "servers[a].host_key: missing",
    ]:
        assert fragment in text, fragment


def test_more_servers_than_subnets() -> None:
    many = [Server(name=f"s{i}", host=f"h{i}", index=i, endpoint=f"203.0.113.{i + 1}") for i in range(5)]
    with pytest.raises(ConfigError) as err:
        validate(settings(cluster_cidr="10.210.0.0/22"), many)
    assert "5 servers but 10.210.0.0/22 holds only 4 /24 subnets" in str(err.value)


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("JIJI_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden copy (JIJI_UPDATE_GOLDEN=1 to accept)"


def test_corrosion_config_golden() -> None:
    ss = servers(3)
    plans = plan_addresses(settings(), ss)
    golden("web0-corrosion.toml", corrosion_config(settings(), plans["web0"], [plans["web1"], plans["web2"]]))
