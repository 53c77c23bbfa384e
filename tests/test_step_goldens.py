"""Every step script the program renders, in every variant the settings can produce, and the files
the steps install, against golden copies (issue 25). `JIJI_UPDATE_GOLDEN=1` rewrites them.

A step has one script for both ways it runs: `create` is `sh -s -- apply` and `delete` is
`sh -s -- remove` with the same script on stdin (the one stored with the resource), so one golden
script per variant covers both; the two command lines themselves differ only by the step's
timeout and are kept in `step-commands.txt`.

The variants: the container engine (docker, podman, none) changes the host, network and dns steps;
where Corrosion comes from (a pinned .tar.gz release, a pinned plain binary, an uploaded local
binary) changes the corrosion step; a server with a private address changes its wireguard step.
The other steps are the same under every engine, which a test here checks, so one copy each is
enough. The inputs are fixed and fake (hashes, public keys, a 3-server stack), so every file is
the same on every run; the step rendered is web1's, the middle of the three.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
from collections.abc import Callable
from functools import partial

import pytest

from jiji_net import render, steps, topology
from jiji_net.mesh import _registry_rows
from jiji_net.model import AccessPeer, CorrosionSource, MeshSettings, Server
from jiji_net.plan import plan_addresses

# validate() through test_plan, which follows it wherever the program keeps it.
from tests.test_plan import golden, servers, validate

ENGINES = ("docker", "podman", "none")
# Fixed fake hashes, one digit each, so a golden file shows which input went where.
LIB_SHA = "1" * 64
TABLE_SHA = "2" * 64
RELEASE_SHA = "3" * 64
UPLOADED_SHA = "4" * 64
DNS_SHA = "5" * 64
TOOL_SHA = "6" * 64
CORROSION = {
    "download-tarball": CorrosionSource(
        url="https://example.invalid/corrosion-x86_64-unknown-linux-gnu.tar.gz", sha256=RELEASE_SHA
    ),
    "download-binary": CorrosionSource(url="https://example.invalid/corrosion", sha256=RELEASE_SHA),
    "upload": CorrosionSource(local_path="/cache/corrosion"),
}
# What a Jinja template left unrendered. The docker and podman network steps carry Go templates
# for `network inspect --format` (`{{range .Subnets}}`, `{{.Gateway}}`), which have no spaces
# inside their braces; ours always do. A value that was None reaches a script as `=None`.
UNRENDERED = re.compile(r"\{%|%\}|\{#|#\}|\{\{[\s-]|[\s-]\}\}|=None\b")
SERVER = "web1"


def fake_public_key(name: str) -> str:
    """A well-formed WireGuard public key (base64 of 32 bytes); no server has it."""
    return base64.b64encode(hashlib.sha256(f"{name}-host".encode()).digest()).decode()


# Access peers on (issue 21): a daemon in the dns step, rules in the network script, a route in
# jiji0.conf, rows in the registry step. One with a declared address and an expiry, one planned.
ACCESS = (
    AccessPeer(name="ana-laptop", public_key=fake_public_key("ana-laptop"), expires_at=1798740000),
    AccessPeer(name="ci-runner", public_key=fake_public_key("ci-runner"), address="10.211.0.10"),
)


def stack(
    engine: str = "none", corrosion: str = "upload", private: bool = False, access: bool = False
) -> tuple[MeshSettings, list[Server]]:
    """The settings and servers of one variant: valid for the program (validate() passes)."""
    settings = MeshSettings(
        corrosion=CORROSION[corrosion], container_engine=engine, access_enabled=access, access_peers=ACCESS if access else ()
    )
    members = servers(3)
    if private:
        members = [
            Server(
                name=s.name,
                host=s.host,
                index=s.index,
                endpoint=s.endpoint,
                host_key=s.host_key,
                private_address=f"10.0.1.{5 + s.index}/24",
            )
            for s in members
        ]
    validate(settings, members)
    return settings, members


def keys(members: list[Server]) -> dict[str, str]:
    return {s.name: fake_public_key(s.name) for s in members}


def host(engine: str) -> steps.Step:
    return steps.host_step(f"{SERVER}-host", engine)


def network(engine: str, access: bool = False) -> steps.Step:
    settings, members = stack(engine, access=access)
    return steps.network_step(f"{SERVER}-network", LIB_SHA, settings, plan_addresses(settings, members)[SERVER])


def wireguard(engine: str = "none", private: bool = False, access: bool = False) -> steps.Step:
    settings, members = stack(engine, private=private, access=access)
    plan = plan_addresses(settings, members)[SERVER]
    server = next(s for s in members if s.name == SERVER)
    return steps.wireguard_step(f"{SERVER}-wireguard", LIB_SHA, settings, plan, server, TABLE_SHA)


def corrosion(source: str, engine: str = "none") -> steps.Step:
    settings, members = stack(engine, corrosion=source)
    plans = plan_addresses(settings, members)
    seeds = topology.seeds_of(plans[SERVER], list(plans.values()))
    # As mesh.py: the uploaded binary's hash, else the pinned release's.
    binary_sha = UPLOADED_SHA if settings.corrosion.local_path else settings.corrosion.sha256 or ""
    return steps.corrosion_step(f"{SERVER}-corrosion", LIB_SHA, settings, plans[SERVER], seeds, binary_sha)


def dns(engine: str, access: bool = False) -> steps.Step:
    settings, members = stack(engine, access=access)
    plan = plan_addresses(settings, members)[SERVER]
    return steps.dns_step(f"{SERVER}-dns", LIB_SHA, settings, plan, DNS_SHA, TOOL_SHA)


def registry(engine: str = "none", access: bool = False) -> steps.Step:
    settings, members = stack(engine, access=access)
    rows = _registry_rows(settings, members, plan_addresses(settings, members), keys(members))
    return steps.registry_step("jiji-registry", LIB_SHA, rows)


# Golden file name (without `step-` and `.sh`) -> the step of that variant.
STEPS: dict[str, Callable[[], steps.Step]] = {
    **{f"host-{e}": partial(host, e) for e in ENGINES},
    **{f"network-{e}": partial(network, e) for e in ENGINES},
    "wireguard": lambda: wireguard(),
    "wireguard-private-network": lambda: wireguard(private=True),
    **{f"corrosion-{c}": partial(corrosion, c) for c in CORROSION},
    **{f"dns-{e}": partial(dns, e) for e in ENGINES},
    "registry": lambda: registry(),
    "network-access": lambda: network("podman", access=True),
    "wireguard-access": lambda: wireguard(access=True),
    "dns-access": lambda: dns("podman", access=True),
    "registry-access": lambda: registry(access=True),
}


def installed(script: str, path_var: str) -> str:
    """The content a step script installs at the path in shell variable `path_var`."""
    marker = f'put_file "{path_var}" '
    start = script.index(marker)
    body = script[script.index("\n", start) + 1 :]
    return body[: body.index("__JIJI_EOF__\n")]


def assert_rendered(name: str, text: str) -> None:
    assert text.strip(), f"{name} is empty"
    found = UNRENDERED.search(text)
    assert found is None, (
        f"{name} has {found.group()!r} left unrendered: {text[max(0, found.start() - 60) : found.end() + 60]!r}"
    )


def assert_shell(name: str, text: str) -> None:
    """A script `sh` can parse (dash on Debian: what `sh -s` runs on the servers)."""
    assert_rendered(name, text)
    assert text.startswith(("#!/bin/sh\n", "# Managed by jiji-net")), f"{name}: {text[:80]!r}"
    assert_parses(name, text)


def assert_parses(name: str, text: str) -> None:
    parsed = subprocess.run(["sh", "-n"], input=text, capture_output=True, text=True, timeout=30)
    assert parsed.returncode == 0, f"{name} does not parse: {parsed.stderr}"


@pytest.mark.parametrize("variant", list(STEPS), ids=list(STEPS))
def test_step_script(variant: str) -> None:
    step = STEPS[variant]()
    name = f"step-{variant}.sh"
    assert_shell(name, step.script)
    kind = variant.split("-")[0]
    assert step.kind == kind
    assert step.script.startswith(f"# Managed by jiji-net: the {kind} step of ")
    # Both ways in, and nothing after the dispatch: create and delete run this same text.
    assert re.search(r"^apply\(\) \{$", step.script, re.M) and re.search(r"^remove\(\) \{", step.script, re.M)
    assert step.script.endswith('main "$@" </dev/null\n')
    if kind == "host":
        assert "LIB=" not in step.script and "\nmain() {" in step.script  # runs before the library is there
    else:
        assert f"LIB={steps.library_path(LIB_SHA)}\n" in step.script and "\nmain() {" not in step.script
    golden(name, step.script)


def test_step_commands() -> None:
    """The create and delete command lines of every variant (they differ by the step's timeout)."""
    lines = []
    for variant, make in STEPS.items():
        step = make()
        assert step.create != step.delete and "sh -s -- apply" in step.create and "sh -s -- remove" in step.delete
        lines += [f"{variant} create ({step.timeout} s): {step.create}", f"{variant} delete: {step.delete}"]
    text = "\n".join(lines) + "\n"
    assert_rendered("step-commands.txt", text)
    for line in lines:
        assert_parses(line, line.split(": ", 1)[1] + "\n")
    golden("step-commands.txt", text)


def test_step_library() -> None:
    lib = render.step_library(steps.helper_path("e" * 64), "e" * 64)
    assert_shell("steplib.sh", lib)
    for function in ("main", "put_file", "from_upload", "install_staged", "unit_running", "unit_gone", "download"):
        assert re.search(rf"^{function}\(\) \{{", lib, re.M), function
    golden("steplib.sh", lib)


def test_engines_change_only_the_host_network_and_dns_steps() -> None:
    """Why one golden copy of the wireguard, corrosion and registry steps is enough, and three of
    the others are not too many."""
    for make in (wireguard, registry, lambda e: corrosion("download-tarball", e), lambda e: corrosion("upload", e)):
        assert len({make(e).script for e in ENGINES}) == 1
    for make in (host, network, dns):
        assert len({make(e).script for e in ENGINES}) == 3, make.__name__
    assert len({corrosion(c).script for c in CORROSION}) == 3
    assert wireguard().script != wireguard(private=True).script


@pytest.mark.parametrize("engine", ENGINES)
def test_files_of_an_engine(engine: str) -> None:
    """The container network script, the jiji-dns unit and host.json: as the steps install them.
    Their golden copies are inside the step goldens (a file installed is its here-document)."""
    settings, members = stack(engine)
    plan = plan_addresses(settings, members)[SERVER]
    script = render.network_script(settings, plan, render.BRIDGE)
    assert_shell(f"network-{engine}.sh", script)
    assert installed(network(engine).script, "$SCRIPT") == script

    unit = render.dns_unit(settings, plan)
    assert_rendered(f"unit-jiji-dns-{engine}.service", unit)
    assert "[Service]" in unit and "ExecStart=" in unit
    assert installed(dns(engine).script, "$UNIT") == unit

    config = render.host_config(settings, plan)
    assert json.loads(config)["container_engine"] == engine
    assert installed(dns(engine).script, "$HOST_CONFIG") == config


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_registrar_unit(engine: str) -> None:
    settings, _ = stack(engine)
    unit = render.registrar_unit(settings)
    assert_rendered(f"unit-jiji-registrar-{engine}.service", unit)
    assert f"After=network-online.target jiji-corrosion.service {engine}.service\n" in unit
    assert installed(dns(engine).script, "$REGISTRAR_UNIT") == unit


def test_no_registrar_without_an_engine() -> None:
    assert 'put_file "$REGISTRAR_UNIT"' not in dns("none").script


def test_units_the_same_on_every_server() -> None:
    for name, unit, step, var in (
        ("unit-jiji-rejoin.service", render.rejoin_unit(), dns, "$REJOIN_UNIT"),
        ("unit-jiji-net-network.service", render.network_unit(), network, "$UNIT"),
    ):
        assert_rendered(name, unit)
        assert "[Unit]" in unit and "ExecStart=" in unit
        assert {installed(step(e).script, var) for e in ENGINES} == {unit}


def test_podman_drop_in() -> None:
    text = installed(network("podman").script, "$PODMAN_DROP_IN")
    assert_rendered("podman-50-jiji-net.conf", text)
    settings, members = stack("podman")
    assert f'dns_servers = ["{plan_addresses(settings, members)[SERVER].mesh_address}"]' in text


def test_mesh_table_and_registry_rows() -> None:
    """The table every server's wireguard step reads, and the rows the registry step writes."""
    settings, members = stack()
    plans = plan_addresses(settings, members)
    table = render.mesh_table(topology.mesh_rows(settings, members, plans, keys(members)))
    assert_rendered("mesh.tsv", table)
    assert len(table.splitlines()) == 4
    golden("mesh.tsv", table)
    settings, members = stack(private=True)
    plans = plan_addresses(settings, members)
    table = render.mesh_table(topology.mesh_rows(settings, members, plans, keys(members)))
    assert "10.0.1.0/24\t10.0.1.6:51820" in table
    golden("mesh-private-network.tsv", table)
