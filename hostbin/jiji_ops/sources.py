"""Reads the live state of this server (with enginecli.py for the registrar, the only modules
here that run commands)."""

from __future__ import annotations

import json
import socket
import subprocess
from dataclasses import dataclass
from typing import Any

from jiji_common import layout

HOST_CONFIG = layout.HOST_CONFIG
CORROSION_CLI = [layout.CORROSION_BINARY, "-c", layout.CORROSION_CONFIG]
DNS_STATS = layout.DNS_STATS_SOCKET


@dataclass(frozen=True)
class HostConfig:
    """What the Pulumi program wrote about this server."""

    server: str
    mesh_address: str
    subnet: str
    container_engine: str
    domain: str
    corrosion_api: str
    access_cidr: str | None = None  # written only while the stack has access peers
    gossip_port: int = 9280  # Corrosion's, on the mesh address: never opened to an access peer

    @classmethod
    def load(cls, path: str = HOST_CONFIG) -> HostConfig:
        try:
            with open(path) as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise SystemExit(f"jiji-net: {path} is missing: this server is not (yet) part of a mesh; run pulumi up") from None
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


def run(argv: list[str], timeout: float = 10) -> tuple[int, str]:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return 127, f"{argv[0]}: not installed"
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]}: no answer in {timeout:.0f} s"
    return out.returncode, out.stdout if out.returncode == 0 else (out.stderr or out.stdout).strip()


def unit_state(unit: str) -> str:
    return run(["systemctl", "is-active", unit])[1].strip() or "unknown"


def parse_systemctl_show(text: str) -> dict[str, dict[str, str]]:
    """`systemctl show --property=Id,... UNIT...` output (a block of KEY=VALUE lines a unit): each
    unit's properties, by its name without `.service`. A block without Id is left out."""
    out = {}
    for block in text.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        name = props.get("Id", "").removesuffix(".service")
        if name:
            out[name] = props
    return out


def wg_dump() -> tuple[int, str]:
    return run(["wg", "show", "jiji0", "dump"])


def corrosion_members() -> tuple[int, str]:
    return run([*CORROSION_CLI, "cluster", "members"])


def dns_stats(path: str = DNS_STATS) -> dict[str, Any] | str:
    """The daemon's counters, or why they could not be read."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(3)
            s.connect(path)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        result: dict[str, Any] = json.loads(data)
        return result
    except (OSError, ValueError) as e:
        return f"{path}: {e}"


def local_containers(engine: str) -> set[str] | None:
    """Ids of containers that exist on this server (None when the engine cannot be asked).
    With no engine, network namespaces stand in for containers."""
    argv = {
        "docker": ["docker", "ps", "-aq", "--no-trunc"],
        "podman": ["podman", "ps", "-aq", "--no-trunc"],
        "none": ["ip", "netns", "list"],
    }[engine]
    code, out = run(argv)
    if code != 0:
        return None
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def wg_config(path: str = layout.WIREGUARD_CONF) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""
