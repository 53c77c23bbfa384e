"""Command line of the host tool: `jiji-net COMMAND` on a server, as root."""

from __future__ import annotations

import argparse
import json
import sys

from . import register
from .corrosion import Corrosion, CorrosionError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jiji-net", description="Inspect and check this server's part of the jiji mesh.")
    p.add_argument("--corrosion-api", default="127.0.0.1:9220", help="Corrosion API address (default %(default)s)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("register", help="(used by the Pulumi program) sync servers/cluster_metadata rows from stdin JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    corrosion = Corrosion(args.corrosion_api)
    try:
        if args.command == "register":
            print(register.run(corrosion, json.load(sys.stdin)))
            return 0
    except (CorrosionError, ValueError) as e:
        print(f"jiji-net {args.command}: {e}", file=sys.stderr)
        return 1
    return 2
