"""The program under Pulumi mocks: config is read and validated once, outputs have the plan."""

from __future__ import annotations

import json
import runpy
from typing import Any

import pulumi
import pytest

from components.plan import ConfigError
from tests.harness import REPO

SECRET_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----"


class Mocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        return f"{args.name}-id", args.inputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


def run_program(config: dict[str, Any]) -> tuple[Mocks, dict[str, Any]]:
    mocks = Mocks()
    pulumi.runtime.set_mocks(mocks, project="jiji-net", stack="test", preview=False)
    pulumi.runtime.set_all_config(
        {f"jiji-net:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()},
        secret_keys=["jiji-net:ssh_private_key"],
    )
    exported: dict[str, Any] = {}
    original = pulumi.export

    def capture(name: str, value: Any) -> None:
        exported[name] = value
        original(name, value)

    pulumi.export = capture  # type: ignore[assignment]
    try:
        runpy.run_path(str(REPO / "__main__.py"), run_name="__main__")
    finally:
        pulumi.export = original  # type: ignore[assignment]
    return mocks, exported


LAB = {
    "servers": [
        {"name": f"lab{i}", "host": f"198.18.0.1{i}", "index": i, "endpoint": f"198.18.0.1{i}"} for i in range(3)
    ],
    "ssh_private_key": SECRET_KEY,
    "container_engine": "none",
    "corrosion_local_path": "/cache/corrosion",
}


@pulumi.runtime.test
def test_outputs_carry_the_address_plan() -> Any:
    _, exported = run_program(LAB)

    def check(servers: dict[str, Any]) -> None:
        assert servers["lab2"] == {
            "index": 2,
            "subnet": "10.210.2.0/24",
            "mesh_address": "10.210.2.1",
            "container_range": "10.210.2.2-10.210.2.254",
            "dns_address": "10.210.2.1",
        }
        assert SECRET_KEY not in json.dumps(servers)

    assert exported["cluster_cidr"] == "10.210.0.0/16" and exported["domain"] == "jiji"
    return pulumi.Output.from_input(exported["servers"]).apply(check)


def test_bad_config_fails_before_any_resource() -> None:
    bad = dict(
        LAB, servers=[{"name": "a", "host": "h", "index": 0, "endpoint": "10.210.0.9"}], cluster_cidr="10.210.0.0/16"
    )
    with pytest.raises(ConfigError) as err:
        run_program(bad)
    assert "servers[a].endpoint: 10.210.0.9 is inside cluster_cidr" in str(err.value)


def test_missing_key_is_named() -> None:
    with pytest.raises(ConfigError) as err:
        run_program({k: v for k, v in LAB.items() if k != "ssh_private_key"})
    assert "ssh_private_key: missing" in str(err.value)


def test_unknown_server_keys_are_named() -> None:
    with pytest.raises(ConfigError) as err:
        run_program(dict(LAB, servers=[{"name": "a", "host": "h", "idx": 0}]))
    assert "unknown keys ['idx']" in str(err.value) and "missing ['index']" in str(err.value)
