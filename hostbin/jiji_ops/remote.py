"""Operator side: run a jiji-net command on servers of a stack over SSH, output grouped by server.

Which servers and how to reach them come from the stack's outputs (`servers.<name>.ssh`), read
with `pulumi stack output --json` or from a file holding that output.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

_OPTIONS = ("-H", "--hosts", "--stack", "--outputs", "-i", "--identity", "-o", "--ssh-option")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-H", "--hosts", help="run on these servers of the stack over SSH: names, comma-separated, or 'all'")
    p.add_argument("--stack", help="the Pulumi stack whose outputs list the servers (default: the selected one)")
    p.add_argument("--outputs", help="a file with `pulumi stack output --json` instead of running pulumi")
    p.add_argument("-i", "--identity", help="SSH private key file (default: ssh's own configuration)")
    p.add_argument("-o", "--ssh-option", action="append", default=[], help="passed to ssh as -o (repeatable)")


def wanted(args: argparse.Namespace) -> bool:
    return bool(args.hosts)


def remote_argv(argv: list[str]) -> list[str]:
    """The command line minus the options that pick servers."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in _OPTIONS:
            skip = True
        elif not any(a.startswith(o + "=") for o in _OPTIONS if o.startswith("--")):
            out.append(a)
    return out


def load_outputs(args: argparse.Namespace) -> dict[str, Any]:
    if args.outputs:
        with open(args.outputs) as f:
            data: dict[str, Any] = json.load(f)
            return data
    argv = ["pulumi", "stack", "output", "--json"] + (["--stack", args.stack] if args.stack else [])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise SystemExit(f"jiji-net: `{' '.join(argv)}` failed: {out.stderr.strip()}")
    data = json.loads(out.stdout)
    return data


def pick(servers: dict[str, Any], hosts: str) -> list[str]:
    if hosts == "all":
        return sorted(servers, key=lambda n: servers[n]["index"])
    names = [h.strip() for h in hosts.split(",") if h.strip()]
    unknown = [n for n in names if n not in servers]
    if unknown:
        raise SystemExit(f"jiji-net: not in the stack: {', '.join(unknown)}; servers are: {', '.join(sorted(servers))}")
    return names


def _ssh(server: dict[str, Any], args: argparse.Namespace, command: str) -> tuple[int, str, str]:
    ssh = server["ssh"]
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", str(ssh["port"])]
    for option in args.ssh_option:
        argv += ["-o", option]
    if args.identity:
        argv += ["-i", args.identity]
    with tempfile.NamedTemporaryFile("w", prefix="jiji-known-hosts-") as known:
        if ssh.get("host_key"):
            # The stack pins this server's host key: trust exactly that key, nothing else.
            target = ssh["host"] if int(ssh["port"]) == 22 else f"[{ssh['host']}]:{ssh['port']}"
            known.write(f"{target} {ssh['host_key']}\n")
            known.flush()
            argv += ["-o", f"UserKnownHostsFile={known.name}", "-o", "StrictHostKeyChecking=yes"]
        argv += [f"{ssh['user']}@{ssh['host']}", command]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            return 124, "", "no answer in 120 s"
    return out.returncode, out.stdout, out.stderr


def run(args: argparse.Namespace, argv: list[str]) -> int:
    outputs = load_outputs(args)
    servers = outputs.get("servers") or {}
    names = pick(servers, args.hosts)
    command = "jiji-net " + " ".join(shlex.quote(a) for a in remote_argv(argv))
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = dict(zip(names, pool.map(lambda n: _ssh(servers[n], args, command), names), strict=True))
    worst = max(code for code, _, _ in results.values())
    if args.json:
        report: dict[str, Any] = {}
        for name, (code, out, err) in results.items():
            try:
                body = json.loads(out) if out.strip() else None
            except ValueError:
                body = out
            report[name] = {"exit": code, "output": body, **({"error": err.strip()} if err.strip() else {})}
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        for name, (code, out, err) in results.items():
            print(f"== {name} ({servers[name]['ssh']['host']})" + ("" if code == 0 else f"  exit {code}"))
            text = (out.rstrip() + ("\n" + err.rstrip() if err.strip() else "")).strip()
            print(text + "\n" if text else "")
    sys.stdout.flush()
    return worst
