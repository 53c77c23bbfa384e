"""The whole program under Pulumi mocks: resource graph, ordering, secrets, and what a change
to the stack changes (the inputs a `pulumi preview --diff` would compare)."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import pytest

from components.plan import ConfigError
from tests.program import Evaluation, evaluate, fake_public_key
from tests.test_plan import fake_host_key, golden

SECRET_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----"
TYPES = {
    "jiji:network:Mesh",
    "jiji:network:Server",
    "jiji:network:ContainerNetwork",
    "jiji:network:WireGuard",
    "jiji:network:Corrosion",
    "jiji:network:Dns",
    "command:remote:Command",
    "command:remote:CopyToRemote",
}


def lab_config(binary: Path, n: int = 3, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "servers": [
            {
                "name": f"lab{i}",
                "host": f"198.18.0.1{i}",
                "index": i,
                "endpoint": f"198.18.0.1{i}",
                "host_key": fake_host_key(f"lab{i}"),
            }
            for i in range(n)
        ],
        "ssh_private_key": SECRET_KEY,
        "container_engine": "none",
        "corrosion_local_path": str(binary),
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bin") / "corrosion"
    path.write_bytes(b"\x7fELF not really corrosion")
    return path


@pytest.fixture(scope="module")
def three(binary: Path) -> Evaluation:
    return evaluate(lab_config(binary))


def changed(before: Evaluation, after: Evaluation) -> set[str]:
    """Resources a preview would show as updated (same name, different inputs)."""
    return {
        n for n, r in after.resources.items() if n in before.resources and r.inputs != before.resources[n].inputs
    }


def test_outputs_carry_plan_and_public_keys(three: Evaluation) -> None:
    lab2 = three.outputs["servers"]["lab2"]
    assert lab2 == {
        "index": 2,
        "subnet": "10.210.2.0/24",
        "mesh_address": "10.210.2.1",
        "container_range": "10.210.2.2-10.210.2.254",
        "dns_address": "10.210.2.1",
        "public_key": fake_public_key("lab2-wg-key"),
        "endpoint": "198.18.0.12:51820",
        "ssh": {"host": "198.18.0.12", "port": 22, "user": "root", "host_key": fake_host_key("lab2")},
    }
    assert three.outputs["mesh"]["servers"]["lab2"] == lab2
    assert three.outputs["cluster_cidr"] == "10.210.0.0/16" and three.outputs["domain"] == "jiji"


def test_graph_has_literal_types_and_parents(three: Evaluation) -> None:
    r = three.resources
    assert {x.typ for x in r.values()} - {"pulumi:pulumi:Stack"} == TYPES
    assert (r["jiji"].typ, r["jiji"].parent_type) == ("jiji:network:Mesh", "pulumi:pulumi:Stack")
    assert (r["lab1"].typ, r["lab1"].parent_type) == ("jiji:network:Server", "jiji:network:Mesh")
    expected_parents = {
        "lab1-host": "jiji:network:Server",
        "lab1-wg-key": "jiji:network:Server",
        "lab1-registry": "jiji:network:Server",
        "lab1-jiji-net-upload": "jiji:network:Server",
        "lab1-network": "jiji:network:Server",
        "lab1-network-service": "jiji:network:ContainerNetwork",
        "lab1-wg-conf": "jiji:network:WireGuard",
        "lab1-corrosion-upload": "jiji:network:Corrosion",
        "lab1-corrosion-service": "jiji:network:Corrosion",
        "lab1-dns-service": "jiji:network:Dns",
    }
    assert {n: r[n].parent_type for n in expected_parents} == expected_parents
    # Each server has the same set of resources, named after it.
    per_server = [sorted(n.removeprefix(f"lab{i}-") for n in r if n.startswith(f"lab{i}-")) for i in range(3)]
    assert per_server[0] == per_server[1] == per_server[2] and len(per_server[0]) == 26


def test_order_follows_what_each_step_needs(three: Evaluation) -> None:
    deps = {n: set(x.dependencies) for n, x in three.resources.items()}
    # Peers need every other server's public key; the interface needs the network unit first.
    assert {"lab0-wg-key", "lab1-wg-key", "lab2-wg-key", "lab1-network-service"} <= deps["lab1-wg-conf"]
    assert "lab1-wg-conf" in deps["lab1-corrosion-upload"]
    assert {"lab1-corrosion-install", "lab1-corrosion-config", "lab1-corrosion-data"} <= deps["lab1-corrosion-service"]
    assert {"lab1-corrosion-service", "lab1-jiji-net-install"} <= deps["lab1-registry"]
    assert "lab1-corrosion-service" in deps["lab1-dns-service"]
    assert all("lab1-host" in deps[n] for n in ("lab1-wg-key", "lab1-ip-forward", "lab1-network-script"))


def test_no_secret_in_any_input_or_output(three: Evaluation) -> None:
    for name, res in three.resources.items():
        inputs = dict(res.inputs)
        connection = inputs.pop("connection", None)
        if res.typ.startswith("command:"):
            # The connection carries the key, so Pulumi keeps the whole connection secret.
            assert connection is not None and connection["secret"]["privateKey"] == SECRET_KEY, name
        text = json.dumps(inputs)
        assert SECRET_KEY not in text and "not-a-real-key" not in text, name
        assert "PrivateKey =" not in str(inputs.get("stdin", "")), name
    assert "not-a-real-key" not in json.dumps(three.outputs)
    # The private key file is read only where it is generated and where syncconf needs it.
    readers = {n for n, x in three.commands().items() if "/etc/wireguard/jiji0.key" in x.inputs.get("create", "")}
    assert readers == {f"lab{i}-{s}" for i in range(3) for s in ("wg-key", "wg-conf")}
    assert "wg pubkey" in three.resources["lab0-wg-key"].inputs["create"]


def test_rendered_files_golden(three: Evaluation) -> None:
    c = three.commands()
    golden("lab1-network.sh", c["lab1-network-script"].inputs["stdin"])
    golden("lab1-jiji-dns.service", c["lab1-dns-unit"].inputs["stdin"])
    golden("lab1-jiji-corrosion.service", c["lab1-corrosion-unit"].inputs["stdin"])
    conf = c["lab1-wg-conf"].inputs["stdin"]
    assert f"PublicKey = {fake_public_key('lab0-wg-key')}" in conf and "Endpoint = 198.18.0.12:51820" in conf
    rows = json.loads(c["lab0-registry"].inputs["stdin"])
    assert [s["id"] for s in rows["servers"]] == ["lab0", "lab1", "lab2"]
    assert rows["servers"][2]["wireguard_pubkey"] == fake_public_key("lab2-wg-key")


def test_endpoint_change_touches_only_that_peer_line(binary: Path, three: Evaluation) -> None:
    config = lab_config(binary)
    config["servers"][1]["endpoint"] = "198.18.0.99"
    after = evaluate(config)
    assert changed(three, after) == {"lab0-wg-conf", "lab2-wg-conf"} | {f"lab{i}-registry" for i in range(3)}
    for name in ("lab0-wg-conf", "lab2-wg-conf"):
        diff = [
            line
            for line in difflib.unified_diff(
                three.resources[name].inputs["stdin"].splitlines(), after.resources[name].inputs["stdin"].splitlines(), n=0
            )
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]
        assert diff == ["-Endpoint = 198.18.0.11:51820", "+Endpoint = 198.18.0.99:51820"]


def test_a_fourth_server_changes_peers_in_place_and_renumbers_nothing(binary: Path, three: Evaluation) -> None:
    four = evaluate(lab_config(binary, n=4))
    assert changed(three, four) == {f"lab{i}-{s}" for i in range(3) for s in ("wg-conf", "corrosion-config", "registry")}
    # Corrosion is not restarted for a new bootstrap entry; nothing of lab0-2 is replaced or removed.
    assert set(three.resources) <= set(four.resources)
    for i in range(3):
        assert four.outputs["servers"][f"lab{i}"] == three.outputs["servers"][f"lab{i}"]
    assert four.outputs["servers"]["lab3"]["subnet"] == "10.210.3.0/24"
    # Removing it again gives back exactly the three-server inputs.
    again = evaluate(lab_config(binary))
    assert changed(three, again) == set() and set(again.resources) == set(three.resources)


def test_removing_a_middle_server_keeps_the_others_slots(binary: Path, three: Evaluation) -> None:
    config = lab_config(binary)
    del config["servers"][1]
    after = evaluate(config)
    assert not any(n.startswith("lab1") for n in after.resources)
    assert after.outputs["servers"]["lab2"]["subnet"] == "10.210.2.0/24"
    assert json.loads(after.resources["lab0-registry"].inputs["stdin"])["servers"][1]["id"] == "lab2"


def test_engines_get_their_network_step(binary: Path) -> None:
    docker = evaluate(lab_config(binary, container_engine="docker")).commands()
    assert "--gateway 10.210.0.1" in docker["lab0-docker-network"].inputs["create"]
    assert "trusted_host_interfaces=jiji0" in docker["lab0-docker-network"].inputs["create"]
    assert "lab0-docker-network" in docker["lab0-network-service"].dependencies
    assert "ip link add" not in docker["lab0-network-script"].inputs["stdin"]
    podman = evaluate(lab_config(binary, container_engine="podman")).commands()
    assert "containers.conf.d/50-jiji-net.conf" in podman["lab0-podman-network"].inputs["create"]


def test_a_pinned_download_is_checked_on_the_server(binary: Path) -> None:
    url = "https://example.invalid/corrosion-x86_64-unknown-linux-gnu.tar.gz"
    sha = "a" * 64
    c = evaluate(
        lab_config(binary, corrosion_local_path="", corrosion_url=url, corrosion_sha256=sha)
    ).commands()
    assert url in c["lab0-corrosion-download"].inputs["create"]
    install = c["lab0-corrosion-install"].inputs["create"]
    assert f"{sha}  /var/lib/jiji-net/staging/corrosion." in install and "tar -xzOf" in install


def test_bad_config_fails_before_any_resource(binary: Path) -> None:
    bad = lab_config(binary, servers=[{"name": "a", "host": "h", "index": 0, "endpoint": "10.210.0.9"}])
    with pytest.raises(ConfigError) as err:
        evaluate(bad)
    assert "servers[a].endpoint: '10.210.0.9' is inside cluster_cidr" in str(err.value)


def test_missing_key_is_named(binary: Path) -> None:
    with pytest.raises(ConfigError) as err:
        evaluate({k: v for k, v in lab_config(binary).items() if k != "ssh_private_key"})
    assert "ssh_private_key: missing" in str(err.value)


def test_missing_corrosion_binary_is_named(binary: Path) -> None:
    with pytest.raises(ConfigError) as err:
        evaluate(lab_config(binary, corrosion_local_path="/nonexistent/corrosion"))
    assert "corrosion_local_path: /nonexistent/corrosion is not a file" in str(err.value)


def test_unknown_server_keys_are_named(binary: Path) -> None:
    with pytest.raises(ConfigError) as err:
        evaluate(lab_config(binary, servers=[{"name": "a", "host": "h", "idx": 0}]))
    assert "unknown keys ['idx']" in str(err.value) and "missing ['index']" in str(err.value)
