"""The remote steps of a server, rendered as shell scripts (pure: no Pulumi imports).

A step is one script, from `templates/steps/<kind>.sh.j2`, that both applies and removes its
part of a server: `sh -s -- apply` or `sh -s -- remove` with the script on stdin. So:
- the files a step installs travel inside its script (quoted here-documents), and
  `pulumi preview --diff` shows a changed file as its changed lines;
- `delete` runs the script stored with the resource, so it removes exactly what that version
  applied;
- the commands themselves are short and constant: a failure message shows the step's own
  stderr, not a page of shell;
- what is the same on every server (the shell functions and helpers of `_lib.sh.j2`) is not in
  the scripts: it is uploaded once per server as the step library, by content hash (state keeps
  its hash), and every step but `host`, which runs before any upload, sources it. Every version
  of the library stays on the server until the host step is removed, so a delete stored with an
  older script finds the library it was made with;
- comment and blank lines are dropped from a rendered script (the templates keep them), except in
  here-documents: an installed file is shown and installed exactly as rendered.

Every script is safe to run again: files are replaced only when their content differs, and units
restart only when what they run changed, so a run whose only change is the connection (a new
SSH key, a pinned host key) restarts nothing. A step's `remove` acts only while the ownership
stamp on the server names its own resource (see `_core.sh.j2`), so a replacement or a renamed
server's new resource is never undone by the old one's delete.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from jiji_common import layout

from . import render, topology
from .model import MeshSettings, Server
from .plan import ServerPlan

_END = "__JIJI_EOF__"


@dataclass(frozen=True)
class Step:
    """A rendered step: its script (the command's stdin) and how long it may run."""

    kind: str
    script: str
    timeout: int

    @property
    def create(self) -> str:
        return _command("apply", self.timeout)

    @property
    def delete(self) -> str:
        return _command("remove", self.timeout)


def _command(action: str, timeout: int) -> str:
    # `timeout` bounds a step that hangs (a download, a unit that never starts); exit 124 is
    # its own, so it gets a sentence.
    return (
        f"timeout -k 10 {timeout} sh -s -- {action} || {{ rc=$?; [ $rc -ne 124 ] ||"
        f" echo 'jiji-net: the {action} step timed out after {timeout} s' >&2; exit $rc; }}"
    )


def _embedded(text: str, what: str) -> str:
    """File content for a quoted here-document: must end a line and never contain the end marker."""
    if not text.endswith("\n"):
        raise ValueError(f"{what}: content must end with a newline")
    if _END in text.splitlines():
        raise ValueError(f"{what}: content contains the here-document marker {_END}")
    return text


_HEREDOC = re.compile(r"<<-?'([A-Za-z_]+)'")


def without_comments(script: str) -> str:
    """`script` without its comment and blank lines, but for its first line (what it is),
    shellcheck directives and the bodies of here-documents. The templates' only multi-line quoted
    strings are awk programs, where `#` starts a comment too."""
    lines = script.splitlines(keepends=True)
    kept = lines[:1]
    end = ""
    for line in lines[1:]:
        if end:
            kept.append(line)
            if line.rstrip("\n") == end:
                end = ""
            continue
        text = line.strip()
        if not text or (text.startswith("#") and not text.startswith("# shellcheck ")):
            continue
        kept.append(line)
        opened = _HEREDOC.findall(line)
        if opened:
            end = opened[-1]
    return "".join(kept)


def render_step(kind: str, owner: str, timeout: int, lib: str, **values: object) -> Step:
    """`lib` is the step library's path on the server, or "" to have its core inline."""
    for key, value in values.items():
        if key.endswith("_text") and isinstance(value, str) and value:  # "" means: not installed
            _embedded(value, f"{kind} step, {key}")
    script = render.step_script(kind, step=kind, owner=owner, lib=lib, **values)
    return Step(kind=kind, script=without_comments(script), timeout=timeout)


_ENGINE_TOOLS = {"docker": ("docker",), "podman": ("podman",), "none": ()}


def staged_name(name: str, sha256: str) -> str:
    """An upload's file name in the staging directory: keyed by content."""
    return f"{name}.{sha256[:16]}"


def staged_path(name: str, sha256: str) -> str:
    """Where an upload lands before it is checked and installed."""
    return f"{layout.STAGING}/{staged_name(name, sha256)}"


def library_path(lib_sha256: str) -> str:
    """Where the step library lands; the host step's remove keeps `steplib.*` while other steps
    are stamped, so the name is part of that contract."""
    return staged_path("steplib", lib_sha256)


def helper_name(helper_sha256: str) -> str:
    """The step helper's staged name: `steplib.*` too, so the host step's remove (also one stored
    by an older version of it) keeps it as long as the libraries that run it."""
    return f"{staged_name('steplib', helper_sha256)}.pyz"


def helper_path(helper_sha256: str) -> str:
    return f"{layout.STAGING}/{helper_name(helper_sha256)}"


def host_step(owner: str, engine: str) -> Step:
    """Checks the server (a switch of engine is refused while the old one has containers on
    jiji), makes its WireGuard key once; stdout is the public key."""
    tools = (
        "wg",
        "wg-quick",
        "ip",
        "iptables",
        "python3",
        "systemctl",
        "sha256sum",
        "timeout",
        "awk",
        *_ENGINE_TOOLS[engine],
    )
    return render_step(
        "host",
        owner,
        60,
        "",
        key_path=layout.WIREGUARD_KEY,
        tools=tools,
        own_dirs=layout.OWN_DIRS,
        engine=engine,
        bridge=render.BRIDGE,
    )


def network_step(owner: str, lib_sha256: str, settings: MeshSettings, plan: ServerPlan) -> Step:
    engine = settings.container_engine
    return render_step(
        "network",
        owner,
        180,
        library_path(lib_sha256),
        engine=engine,
        bridge=render.BRIDGE,
        subnet=plan.subnet,
        gateway=plan.mesh_address,
        mtu=settings.mtu,
        script_path=layout.NETWORK_SCRIPT,
        unit_path=f"{layout.SYSTEMD_UNITS}/jiji-net-network.service",
        script_text=render.network_script(settings, plan, render.BRIDGE),
        unit_text=render.network_unit(),
        podman_drop_in_text=f'# Managed by jiji-net.\n[containers]\ndns_servers = ["{plan.mesh_address}"]\n',
        podman_network_text=render.podman_network(settings, plan, render.BRIDGE),
    )


def wireguard_step(
    owner: str, lib_sha256: str, settings: MeshSettings, plan: ServerPlan, server: Server, table_sha256: str
) -> Step:
    return render_step(
        "wireguard",
        owner,
        60,
        library_path(lib_sha256),
        server=server.name,
        private_network=topology.private_network_of(server),
        keepalive=settings.keepalive,
        key_path=layout.WIREGUARD_KEY,
        table_sha256=table_sha256,
        header_text=render.wireguard_interface(settings, plan),
        access_cidr=settings.access_cidr if settings.access_enabled else "",
    )


def corrosion_step(
    owner: str,
    lib_sha256: str,
    settings: MeshSettings,
    plan: ServerPlan,
    seeds: list[ServerPlan],
    binary_sha256: str,
) -> Step:
    url = settings.corrosion.url or ""
    return render_step(
        "corrosion",
        owner,
        600 if url else 120,
        library_path(lib_sha256),
        url=url,
        member="corrosion" if url.endswith(".tar.gz") else "",
        staged=staged_path("corrosion", binary_sha256),
        binary_sha256=binary_sha256,
        binary_path=layout.CORROSION_BINARY,
        config_path=layout.CORROSION_CONFIG,
        schema_path=layout.CORROSION_SCHEMA,
        unit_path=f"{layout.SYSTEMD_UNITS}/jiji-corrosion.service",
        data_dir=layout.CORROSION_DATA,
        api=f"127.0.0.1:{settings.api_port}",
        ready_timeout=30,
        config_text=render.corrosion_config(settings, plan, seeds),
        schema_text=render.corrosion_schema(),
        unit_text=render.corrosion_unit(),
    )


def dns_step(
    owner: str, lib_sha256: str, settings: MeshSettings, plan: ServerPlan, dns_sha256: str, tool_sha256: str
) -> Step:
    return render_step(
        "dns",
        owner,
        60,
        library_path(lib_sha256),
        dns_staged=staged_path("jiji-dns", dns_sha256),
        dns_sha256=dns_sha256,
        dns_path=layout.DNS_PYZ,
        tool_staged=staged_path("jiji-net", tool_sha256),
        tool_sha256=tool_sha256,
        tool_path=layout.TOOL,
        host_config_path=layout.HOST_CONFIG,
        unit_path=f"{layout.SYSTEMD_UNITS}/jiji-dns.service",
        host_config_text=render.host_config(settings, plan),
        unit_text=render.dns_unit(settings, plan),
        registrar_unit_path=f"{layout.SYSTEMD_UNITS}/jiji-registrar.service",
        registrar_unit_text=render.registrar_unit(settings) if settings.container_engine != "none" else "",
        rejoin_unit_path=f"{layout.SYSTEMD_UNITS}/jiji-rejoin.service",
        rejoin_unit_text=render.rejoin_unit(),
        jit_unit_path=f"{layout.SYSTEMD_UNITS}/jiji-jit.service",
        jit_unit_text=render.jit_unit(settings, plan) if settings.access_enabled else "",
        metrics_unit_path=f"{layout.SYSTEMD_UNITS}/jiji-metrics.service",
        metrics_unit_text=render.metrics_unit(settings, plan) if settings.metrics_enabled else "",
    )


def engine_gate_step() -> Step:
    """Runs nothing (see templates/steps/engine-gate.sh.j2): a point every host step reaches
    before any network step starts."""
    return Step(kind="engine-gate", script=without_comments(render.step_script("engine-gate")), timeout=30)


def registry_step(owner: str, lib_sha256: str, rows_text: str) -> Step:
    return render_step(
        "registry", owner, 120, library_path(lib_sha256), stamped=False, tool_path=layout.TOOL, rows_text=rows_text
    )
