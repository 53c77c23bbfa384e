"""`jiji-net prometheus targets` (on the operator's machine, from the stack's outputs): the
Prometheus file_sd document naming every server's two metrics endpoints (docs/monitoring.md).

One target group per server and job: a group's labels apply to all its targets, and each target
needs its own `server` label. The group's `job` label is the one the series get: Prometheus sets
a target's job from the scrape config's job_name only when discovery gave it none (PopulateLabels
in scrape/target.go), so one scrape config with file_sd serves both jobs.

The endpoints listen on each server's mesh address, reached over jiji0 only: Prometheus runs on a
server of the mesh, or scrapes through one.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

from jiji_common.files import replace_file

from . import remote

# Job name, and the key of the stack's `metrics` output holding that job's port.
JOBS = (("jiji-net", "host_port"), ("jiji-dns", "dns_port"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="prometheus_command", required=True)
    t = sub.add_parser(
        "targets", help="the file_sd targets of every server's metrics endpoints (from the stack's outputs)"
    )
    t.add_argument(
        "--output",
        metavar="FILE",
        help="write the document to FILE, replaced whole (Prometheus never reads half of it); default: stdout",
    )


def targets(outputs: dict[str, Any]) -> list[dict[str, Any]]:
    """The file_sd document for a stack's outputs (`pulumi stack output --json`, or its `mesh`)."""
    mesh = outputs.get("mesh") or outputs
    # Inside the stack's `mesh` output, or exported beside it: either will do.
    metrics = mesh.get("metrics") or outputs.get("metrics")
    if not metrics:
        raise ValueError(
            "the stack's outputs have no metrics endpoints ('metrics' is missing or null): metrics are off in"
            " this stack; set jiji-net:metrics_enabled to true (its default) and run pulumi up, then run this again"
        )
    ports = {job: _port(metrics, key) for job, key in JOBS}
    servers = mesh.get("servers") or {}
    if not servers:
        raise ValueError("the stack's outputs list no servers ('servers' is empty): run pulumi up first")
    groups = []
    for name, server in sorted(servers.items(), key=lambda item: item[1]["index"]):
        for job, _ in JOBS:
            groups.append(
                {"targets": [_address(server["mesh_address"], ports[job])], "labels": {"job": job, "server": name}}
            )
    return groups


def _port(metrics: dict[str, Any], key: str) -> int:
    port = metrics.get(key)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(
            f"the stack's outputs have metrics.{key} = {port!r}, not a port: run pulumi up to rewrite them"
        )
    return port


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ipaddress.ip_address(host).version == 6 else f"{host}:{port}"


def render(groups: list[dict[str, Any]]) -> str:
    return json.dumps(groups, indent=2) + "\n"


def run(args: argparse.Namespace) -> int:
    try:
        text = render(targets(remote.load_outputs(args)))
    except ValueError as e:
        print(f"jiji-net prometheus targets: {e}", file=sys.stderr)
        return 1
    if args.output:
        replace_file(Path(args.output), text)
    else:
        sys.stdout.write(text)
    return 0
