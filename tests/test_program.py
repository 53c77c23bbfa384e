"""The whole program under Pulumi mocks: resource graph, ordering, secrets, and what a change
to the stack changes (the inputs a `pulumi preview --diff` would compare)."""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from jiji_net.validation import ConfigError
from tests.program import Evaluation, evaluate, fake_public_key
from tests.test_plan import fake_host_key, golden

SECRET_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----"
TYPES = {
    "jiji:network:Mesh",
    "jiji:network:Server",
    "command:remote:Command",
    "command:remote:CopyToRemote",
}
STEPS = ("host", "network", "wireguard", "corrosion", "dns")
UPLOADS = ("staged-upload", "mesh-upload", "corrosion-upload")


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
    return {n for n, r in after.resources.items() if n in before.resources and r.inputs != before.resources[n].inputs}


def test_outputs_carry_plan_and_public_keys(three: Evaluation) -> None:
    lab2 = three.outputs["servers"]["lab2"]
    assert lab2 == {
        "index": 2,
        "subnet": "10.210.2.0/24",
        "mesh_address": "10.210.2.1",
        "container_range": "10.210.2.2-10.210.2.254",
        "dns_address": "10.210.2.1",
        "public_key": fake_public_key("lab2-host"),
        "endpoint": "198.18.0.12:51820",
        "ssh": {"host": "198.18.0.12", "port": 22, "user": "root", "host_key": fake_host_key("lab2")},
    }
    assert three.outputs["mesh"]["servers"]["lab2"] == lab2
    assert three.outputs["cluster_cidr"] == "10.210.0.0/16" and three.outputs["domain"] == "jiji"


def test_graph_has_literal_types_parents_and_ten_resources_a_server(three: Evaluation) -> None:
    r = three.resources
    assert {x.typ for x in r.values()} - {"pulumi:pulumi:Stack"} == TYPES
    assert (r["jiji"].typ, r["jiji"].parent_type) == ("jiji:network:Mesh", "pulumi:pulumi:Stack")
    assert (r["lab1"].typ, r["lab1"].parent_type) == ("jiji:network:Server", "jiji:network:Mesh")
    assert r["jiji-registry"].parent_type == r["jiji-engine-gate"].parent_type == "jiji:network:Mesh"
    per_server = [sorted(n.removeprefix(f"lab{i}-") for n in r if n.startswith(f"lab{i}-")) for i in range(3)]
    assert per_server[0] == per_server[1] == per_server[2] == sorted(STEPS + UPLOADS)
    assert all(r[f"lab1-{n}"].parent_type == "jiji:network:Server" for n in STEPS + UPLOADS)
    # The server's component and its eight steps and uploads; the engine gate and the registry
    # step for the mesh.
    assert len(r) == 1 + 3 * 9 + 2


def test_every_step_is_safe_under_replacement(three: Evaluation) -> None:
    for name, res in three.resources.items():
        if res.typ == "command:remote:Command":
            assert res.options["delete_before_replace"], name
            assert res.inputs["addPreviousOutputInEnv"] is False, name
            # Short constant commands with a timeout; the script is the stdin.
            assert (
                res.inputs["create"].startswith("timeout -k 10 ") and res.inputs["create"].count("sh -s -- apply") == 1
            )
            assert res.inputs["delete"].startswith("timeout -k 10 ") and "sh -s -- remove" in res.inputs["delete"]
            assert res.inputs["stdin"].rstrip().endswith('main "$@" </dev/null'), name
        if res.typ.startswith("command:"):
            assert not res.options["ignore_changes"] and not res.options["retain_on_delete"], name
            assert "triggers" not in res.inputs, name


def test_order_follows_what_each_step_needs(three: Evaluation) -> None:
    deps = {n: set(x.dependencies) for n, x in three.resources.items()}
    # The interface needs the network unit and the mesh table (made from every server's key).
    assert {"lab1-network", "lab1-mesh-upload"} <= deps["lab1-wireguard"]
    assert {"lab1-wireguard", "lab1-corrosion-upload"} <= deps["lab1-corrosion"]
    assert {"lab1-corrosion", "lab1-staged-upload"} <= deps["lab1-dns"]
    assert {f"lab{i}-dns" for i in range(3)} <= deps["jiji-registry"]
    assert all("lab1-host" in deps[f"lab1-{n}"] for n in ("network", "staged-upload", "mesh-upload"))
    assert "lab1-staged-upload" in deps["lab1-network"]
    # No network step before every host step passed (an engine switch is checked there), through
    # one gate: 2N dependencies, not N*N.
    assert deps["jiji-engine-gate"] == {f"lab{i}-host" for i in range(3)}
    assert all("jiji-engine-gate" in deps[f"lab{i}-network"] for i in range(3))
    assert not any(f"lab{i}-host" in deps[f"lab{j}-network"] for i in range(3) for j in range(3) if i != j)


def test_steps_source_one_step_library_and_carry_no_comments(three: Evaluation) -> None:
    """What is the same on every server is uploaded once by hash, not stored in every script."""
    trees = {r.inputs["source"]["file_archive"] for n, r in three.resources.items() if n.endswith("-staged-upload")}
    assert len(trees) == 1 and all(r.inputs["remotePath"] == "/var/lib/jiji-net" for n, r in three.resources.items() if n.endswith("-staged-upload"))
    (tree,) = trees
    assert Path(tree).name == "staging"
    # The tree holds the library, its helper and both zipapps under their content-keyed staging
    # names; the library names the helper it runs, by its hash.
    libs = sorted(Path(tree).glob("steplib.*[!z]"))
    (helper,) = Path(tree).glob("steplib.*.pyz")
    assert len(libs) == 1 and sorted(f.name.split(".")[0] for f in Path(tree).iterdir()) == ["jiji-dns", "jiji-net", "steplib", "steplib"]
    sha = hashlib.sha256(libs[0].read_bytes()).hexdigest()
    assert libs[0].name == f"steplib.{sha[:16]}"
    assert helper.name == f"steplib.{hashlib.sha256(helper.read_bytes()).hexdigest()[:16]}.pyz"
    assert f"STEP_HELPER=/var/lib/jiji-net/staging/{helper.name}\n" in libs[0].read_text()
    for name, res in three.commands().items():
        script = res.inputs["stdin"]
        sourced = f"LIB=/var/lib/jiji-net/staging/steplib.{sha[:16]}\n" in script
        # The host step runs before any upload (its core is inline); the gate runs nothing.
        assert sourced == (not name.endswith(("-host", "-engine-gate"))), name
        assert "put_file() {" not in script, name


def test_no_secret_in_any_input_or_output(three: Evaluation) -> None:
    for name, res in three.resources.items():
        inputs = dict(res.inputs)
        connection = inputs.pop("connection", None)
        if res.typ.startswith("command:"):
            # The connection carries the key, so Pulumi keeps the whole connection secret.
            assert connection is not None and connection["secret"]["privateKey"] == SECRET_KEY, name
        text = json.dumps(inputs)
        assert SECRET_KEY not in text and "not-a-real-key" not in text, name
        # No key value anywhere (the wireguard step names the key file, never a key).
        assert not re.search(r"PrivateKey\s*=\s*[A-Za-z0-9+/]{43}=", str(inputs.get("stdin", ""))), name
    assert "not-a-real-key" not in json.dumps(three.outputs)
    # The private key file is named only where it is generated and where syncconf needs it.
    readers = {n for n, x in three.commands().items() if "/etc/wireguard/jiji0.key" in x.inputs.get("stdin", "")}
    assert readers == {f"lab{i}-{s}" for i in range(3) for s in ("host", "wireguard")}
    assert "wg pubkey" in three.resources["lab0-host"].inputs["stdin"]


def embedded(script: str, path_var: str) -> str:
    """The content a step script installs at the path in shell variable `path_var`."""
    marker = f'put_file "{path_var}" '
    start = script.index(marker)
    body = script[script.index("\n", start) + 1 :]
    return body[: body.index("__JIJI_EOF__\n")]


def test_rendered_files_golden(three: Evaluation) -> None:
    c = three.commands()
    golden("lab1-network.sh", embedded(c["lab1-network"].inputs["stdin"], "$SCRIPT"))
    golden("lab1-jiji-dns.service", embedded(c["lab1-dns"].inputs["stdin"], "$UNIT"))
    golden("lab1-jiji-corrosion.service", embedded(c["lab1-corrosion"].inputs["stdin"], "$UNIT"))
    rows = json.loads(embedded_registry(c["jiji-registry"].inputs["stdin"]))
    assert [s["id"] for s in rows["servers"]] == ["lab0", "lab1", "lab2"]
    assert rows["servers"][2]["wireguard_pubkey"] == fake_public_key("lab2-host")


def embedded_registry(script: str) -> str:
    body = script[script.index("register <<'__JIJI_EOF__'\n") :].split("\n", 1)[1]
    return body[: body.index("__JIJI_EOF__\n")]


def table_lines(evaluation: Evaluation) -> list[str]:
    return Path(evaluation.resources["lab0-mesh-upload"].inputs["source"]["file_asset"]).read_text().splitlines()


def test_endpoint_change_shows_once_in_the_registry_and_reaches_every_wireguard_step(
    binary: Path, three: Evaluation
) -> None:
    config = lab_config(binary)
    config["servers"][1]["endpoint"] = "198.18.0.99"
    before_table = table_lines(three)
    after = evaluate(config)
    # The table every server gets changed in that one line; state keeps only its hash per server.
    diff = [
        x
        for x in difflib.unified_diff(before_table, table_lines(after), n=0)
        if x[:1] in "+-" and x[:3] not in ("+++", "---")
    ]
    assert [x[0] for x in diff] == ["-", "+"] and "198.18.0.99:51820" in diff[1]
    # Every wireguard step carries the new table's hash; nothing of Corrosion or jiji-dns changes.
    assert changed(three, after) == {f"lab{i}-{s}" for i in range(3) for s in ("wireguard", "mesh-upload")} | {
        "jiji-registry"
    }
    registry = [
        x
        for x in difflib.unified_diff(
            three.resources["jiji-registry"].inputs["stdin"].splitlines(),
            after.resources["jiji-registry"].inputs["stdin"].splitlines(),
            n=0,
        )
        if x[:1] in "+-" and x[:3] not in ("+++", "---")
    ]
    assert registry == ['-    "198.18.0.11"', '+    "198.18.0.99"']


def test_a_fourth_server_changes_no_corrosion_or_dns_file(binary: Path, three: Evaluation) -> None:
    four = evaluate(lab_config(binary, n=4))
    assert changed(three, four) == {f"lab{i}-{s}" for i in range(3) for s in ("wireguard", "mesh-upload")} | {
        "jiji-registry"
    }
    assert set(three.resources) <= set(four.resources)
    for i in range(3):
        assert four.outputs["servers"][f"lab{i}"] == three.outputs["servers"][f"lab{i}"]
    assert four.outputs["servers"]["lab3"]["subnet"] == "10.210.3.0/24"
    # Removing it again gives back exactly the three-server inputs.
    again = evaluate(lab_config(binary))
    assert changed(three, again) == set() and set(again.resources) == set(three.resources)


def test_a_connection_change_changes_only_connections(binary: Path, three: Evaluation) -> None:
    other = lab_config(binary, ssh_private_key=SECRET_KEY.replace("not-a-real-key", "another-key"))
    after = evaluate(other)
    for name, res in after.resources.items():
        before = {k: v for k, v in three.resources[name].inputs.items() if k != "connection"}
        assert {k: v for k, v in res.inputs.items() if k != "connection"} == before, name


def test_a_gone_server_is_kept_untouched_and_forgotten_by_the_rest(binary: Path, three: Evaluation) -> None:
    config = lab_config(binary)
    config["servers"][1]["gone"] = True
    after = evaluate(config)
    lab1 = {n: r for n, r in after.resources.items() if n.startswith("lab1-")}
    assert len(lab1) == 8
    assert all(r.options["ignore_changes"] == ["*"] and r.options["retain_on_delete"] for r in lab1.values())
    assert "lab1" not in after.outputs["servers"]
    assert [line.split("\t")[0] for line in table_lines(after)[1:]] == ["lab0", "lab2"]
    rows = json.loads(embedded_registry(after.resources["jiji-registry"].inputs["stdin"]))
    assert [s["id"] for s in rows["servers"]] == ["lab0", "lab2"]
    assert "lab1-dns" not in after.resources["jiji-registry"].dependencies
    # The first server gone: the registry moves to the next one, under the same resource name.
    config["servers"][1]["gone"] = False
    config["servers"][0]["gone"] = True
    moved = evaluate(config)
    assert moved.resources["jiji-registry"].inputs["connection"]["secret"]["host"] == "198.18.0.11"


def test_removing_a_middle_server_keeps_the_others_slots(binary: Path, three: Evaluation) -> None:
    config = lab_config(binary)
    del config["servers"][1]
    after = evaluate(config)
    assert not any(n.startswith("lab1") for n in after.resources)
    assert after.outputs["servers"]["lab2"]["subnet"] == "10.210.2.0/24"
    assert json.loads(embedded_registry(after.resources["jiji-registry"].inputs["stdin"]))["servers"][1]["id"] == "lab2"


def test_engines_get_their_network_step(binary: Path) -> None:
    docker = evaluate(lab_config(binary, container_engine="docker")).commands()["lab0-network"].inputs["stdin"]
    assert "--gateway 10.210.0.1" in docker and "trusted_host_interfaces=jiji0" in docker
    assert "ip link add" not in embedded(docker, "$SCRIPT")
    podman = evaluate(lab_config(binary, container_engine="podman")).commands()["lab0-network"].inputs["stdin"]
    assert 'dns_servers = ["10.210.0.1"]' in podman and 'put_file "$PODMAN_DROP_IN"' in podman
    # With an engine, the registrar runs beside jiji-dns; with none there is nothing to register.
    assert (
        "jiji-registrar.service"
        in evaluate(lab_config(binary, container_engine="podman")).commands()["lab0-dns"].inputs["stdin"]
    )
    plain = evaluate(lab_config(binary)).commands()["lab0-dns"].inputs["stdin"]
    assert "ExecStart=/usr/local/bin/jiji-net registrar" not in plain
    # Every server, engine or not, runs the watch that brings Corrosion back after a partition.
    assert "ExecStart=/usr/local/bin/jiji-net rejoin" in plain


def test_a_pinned_download_is_checked_on_the_server(binary: Path) -> None:
    url = "https://example.invalid/corrosion-x86_64-unknown-linux-gnu.tar.gz"
    sha = "a" * 64
    evaluation = evaluate(lab_config(binary, corrosion_local_path="", corrosion_url=url, corrosion_sha256=sha))
    step = evaluation.commands()["lab0-corrosion"].inputs["stdin"]
    assert (
        f'download {url} "$STAGED" {sha}' in step and f'release=$(from_upload "$STAGED" {sha}' in step and "tar -xzOf" in step
    )
    assert "lab0-corrosion-upload" not in evaluation.resources
    assert evaluation.commands()["lab0-corrosion"].inputs["create"].startswith("timeout -k 10 600 ")


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


def test_the_10001st_access_peer_changes_only_the_registry_step(binary: Path) -> None:
    """With access peers on, a peer more is a registry row, not a change to any server's steps;
    turning the feature on is what changes the servers (a daemon, a route, firewall rules)."""
    import base64
    import hashlib
    import time

    def peers(n: int) -> list[dict[str, str]]:
        return [
            {"name": f"peer-{i}", "public_key": base64.b64encode(hashlib.sha256(f"peer-{i}".encode()).digest()).decode()}
            for i in range(n)
        ]

    started = time.monotonic()
    ten_k = evaluate(lab_config(binary, access_enabled=True, access_peers=peers(10_000)))
    seconds = time.monotonic() - started
    one_more = evaluate(lab_config(binary, access_enabled=True, access_peers=peers(10_001)))
    assert changed(ten_k, one_more) == {"jiji-registry"}
    assert set(one_more.resources) == set(ten_k.resources)
    assert len(one_more.outputs["mesh"]["access"]["peers"]) == 10_001
    addresses = {p["address"] for p in one_more.outputs["mesh"]["access"]["peers"].values()}
    assert len(addresses) == 10_001 and all(a.startswith("10.211.") for a in addresses)
    # Off -> on changes every server's network, wireguard and dns steps, and the registry.
    off = evaluate(lab_config(binary))
    on = evaluate(lab_config(binary, access_enabled=True))
    assert changed(off, on) == {f"lab{i}-{s}" for i in range(3) for s in ("network", "wireguard", "dns")} | {"jiji-registry"}
    print(f"\nprogram with 10,000 access peers evaluated in {seconds:.1f} s")
