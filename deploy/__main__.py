"""`python -m deploy ACTION --stack S`: up, preview, refresh or destroy a stack of the mesh program
through the Automation API, as an inline program: the Pulumi CLI is all it needs (no language
host), and the `command` provider is the official one where installed, else ours (toolchain.py).

  python -m deploy up --stack prod                  # stacks/Pulumi.prod.yaml, as `pulumi up` would
  python -m deploy preview --stack lab --dir .lab   # a stack whose config file lives in .lab/
  python -m deploy pulumi --stack lab --dir .lab -- config set dns_ttl 30   # the CLI, same setup

The engine's own progress output is streamed as it comes. The backend is $PULUMI_BACKEND_URL,
else a local one in DIR/.pulumi-state (`--backend` overrides both).
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from . import toolchain

ACTIONS = ("up", "preview", "refresh", "destroy")


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m deploy", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=(*ACTIONS, "pulumi", "outputs"))
    p.add_argument("--stack", required=True)
    p.add_argument("--program", type=Path, default=toolchain.REPO,
                   help="a directory with Pulumi.yaml and __main__.py to run instead of the mesh program (e.g. examples/...)")  # fmt: skip
    p.add_argument("--dir", type=Path, default=toolchain.REPO, help="where the stack's config file is (default: the repository, stacks/)")
    p.add_argument("--backend", help="state backend URL (default: $PULUMI_BACKEND_URL, else file://DIR/.pulumi-state)")
    p.add_argument("--diff", action="store_true", help="show each change as a diff (preview, up)")
    p.add_argument("--replace", action="append", default=[], metavar="NAME", help="replace this resource (a name or URN)")
    p.add_argument("--event-log", type=Path, help="write the engine's step events here, one JSON object a line")
    p.add_argument("--outputs-file", type=Path, help="after up, write the stack's outputs here as JSON")
    p.add_argument("rest", nargs="*", help="for `pulumi`: the CLI's arguments (after --)")
    return p.parse_args(argv)


def backend_of(args: argparse.Namespace, where: Path) -> str:
    backend = args.backend or os.environ.get("PULUMI_BACKEND_URL") or f"file://{where / '.pulumi-state'}"
    if backend.startswith("file://"):
        Path(backend.removeprefix("file://")).mkdir(parents=True, exist_ok=True)  # the CLI will not make it
    return backend


def main(argv: list[str]) -> int:
    args = _args(argv)
    where = toolchain.project_dir(args.dir, args.program)
    provider = toolchain.choose_provider()
    root = toolchain.pulumi_root()
    env = toolchain.cli_env(provider.home, backend_of(args, where))
    if args.action == "pulumi":
        return subprocess.run([str(root / "bin" / "pulumi"), *args.rest, "--stack", args.stack], cwd=where, env=env).returncode
    if args.action == "outputs":
        out = subprocess.run([str(root / "bin" / "pulumi"), "stack", "output", "--json", "--show-secrets", "--stack", args.stack],
                             cwd=where, env=env)  # fmt: skip
        return out.returncode
    print(f"jiji-net deploy: {args.action} of stack {args.stack} in {where}: Pulumi CLI {root / 'bin' / 'pulumi'}, {provider.description}",
          flush=True)  # fmt: skip
    return _deploy(args, where, root, provider, env)


def _deploy(args: argparse.Namespace, where: Path, root: Path, provider: toolchain.Provider, env: dict[str, str]) -> int:
    from pulumi import automation as auto

    from jiji_net.program import mesh_program

    program: Any = mesh_program
    project_name = "jiji-net"
    if args.program.resolve() != toolchain.REPO:
        # Another program over the mesh component: its own project, its __main__.py run as is.
        main_file = str(args.program.resolve() / "__main__.py")
        program = lambda: runpy.run_path(main_file, run_name="__main__")  # noqa: E731
        project_name = yaml.safe_load((args.program / "Pulumi.yaml").read_text())["name"]
    stack = auto.create_or_select_stack(
        stack_name=args.stack,
        project_name=project_name,
        program=program,
        opts=auto.LocalWorkspaceOptions(
            work_dir=str(where),
            pulumi_home=str(provider.home),
            env_vars={k: v for k, v in env.items() if k.startswith("PULUMI_")},
            pulumi_command=auto.PulumiCommand(root=str(root), skip_version_check=True),
        ),
    )
    events = open(args.event_log, "w") if args.event_log else None  # noqa: SIM115 - closed below
    common: dict[str, Any] = {"on_output": lambda line: print(line, flush=True), "color": "never"}
    if events is not None:
        common["on_event"] = lambda event: _write_event(events, event)
    try:
        if args.action == "up":
            stack.up(diff=args.diff, replace=_urns(stack, args.replace), **common)
            if args.outputs_file:
                outputs = {k: v.value for k, v in stack.outputs().items()}
                args.outputs_file.write_text(json.dumps(outputs, indent=1, sort_keys=True) + "\n")
        elif args.action == "preview":
            stack.preview(diff=args.diff, replace=_urns(stack, args.replace), **common)
        elif args.action == "refresh":
            stack.refresh(**common)
        else:
            stack.destroy(**common)
    except auto.errors.CommandError as e:
        # The engine's own account of what failed (its stdout was streamed above).
        print(_stderr_of(e), file=sys.stderr, flush=True)
        return 1
    finally:
        if events is not None:
            events.close()
    return 0


def _urns(stack: Any, names: list[str]) -> list[str]:
    """`--replace` takes a resource's name or its URN."""
    if not names or all(n.startswith("urn:") for n in names):
        return names
    resources = stack.export_stack().deployment.get("resources", [])
    by_name: dict[str, list[str]] = {}
    for r in resources:
        by_name.setdefault(r["urn"].rsplit("::", 1)[1], []).append(r["urn"])
    urns = []
    for n in names:
        found = [n] if n.startswith("urn:") else by_name.get(n, [])
        if len(found) != 1:
            raise SystemExit(f"jiji-net deploy: --replace {n}: {len(found)} resources have that name; give its URN")
        urns += found
    return urns


def _stderr_of(error: Exception) -> str:
    text = str(error)
    marker = "\n stderr: "
    return text[text.index(marker) + len(marker):] if marker in text else text


def _write_event(out: Any, event: Any) -> None:
    """The parts of an engine event a caller acts on: which step did what to which resource, and
    the diagnostics."""
    record: dict[str, Any] = {"sequence": event.sequence}
    if event.res_outputs_event is not None or event.res_op_failed_event is not None:
        kind = "resOutputsEvent" if event.res_outputs_event is not None else "resOpFailedEvent"
        metadata = (event.res_outputs_event or event.res_op_failed_event).metadata
        record[kind] = {"metadata": {"op": metadata.op.value, "urn": metadata.urn, "type": metadata.type}}
    elif event.diagnostic_event is not None:
        d = event.diagnostic_event
        record["diagnosticEvent"] = {"severity": d.severity, "urn": d.urn, "message": d.message}
    else:
        return
    out.write(json.dumps(record) + "\n")
    out.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
