"""`python3 steplib.<hash>.pyz COMMAND ...`: what the step library runs (see _lib.sh.j2)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from jiji_common import layout

from . import docker_daemon, fetch, netavark, probe
from .errors import StepError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jiji-net step helper")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="fetch URL to FILE unless FILE has SHA256; a mismatch is deleted")
    d.add_argument("url")
    d.add_argument("file", type=Path)
    d.add_argument("sha256")
    a = sub.add_parser("api-answers", help="exit 0 when Corrosion's API at HOST:PORT answers a query")
    a.add_argument("address")
    s = sub.add_parser("docker-dns", help="set daemon.json's dns; prints 'changed' when it did")
    s.add_argument("saved", type=Path)
    s.add_argument("address")
    s.add_argument("--daemon-json", type=Path, default=Path(layout.DOCKER_DAEMON_JSON))
    r = sub.add_parser("docker-restore", help="daemon.json as docker-dns found it; prints changed or changed-empty")
    r.add_argument("saved", type=Path)
    r.add_argument("--daemon-json", type=Path, default=Path(layout.DOCKER_DAEMON_JSON))
    n = sub.add_parser("podman-interface", help="name the bridge of the podman network in FILE")
    n.add_argument("file", type=Path)
    n.add_argument("bridge")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "download":
            fetch.download(args.url, args.file, args.sha256)
        elif args.command == "api-answers":
            return 0 if probe.api_answers(args.address) else 1
        elif args.command == "docker-dns":
            if docker_daemon.set_dns(args.daemon_json, args.saved, args.address):
                print("changed")
        elif args.command == "docker-restore":
            result = docker_daemon.restore(args.daemon_json, args.saved)
            if result:
                print(result)
        elif args.command == "podman-interface":
            netavark.name_interface(args.file, args.bridge)
    except StepError as e:
        # As the library's `say` prints it: this server, the step that ran us (JIJI_STEP).
        print(f"jiji-net: {socket.gethostname()}: {os.environ.get('JIJI_STEP', 'step')}: {e}", file=sys.stderr)
        return 1
    return 0
