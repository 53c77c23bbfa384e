"""One deployment of a small program of `command:remote` resources through the real engine (the
Automation API, inline), for the provider's conformance tests: `python -m tests.provider_case
SPEC.json` prints what happened as JSON. A process of its own, so each run starts from a clean
Pulumi runtime; the PULUMI_HOME in the spec decides which provider answers.

SPEC: {"dir", "stack", "action": up|preview|destroy, "pulumi_home", "verbose_log": bool,
"resources": [{"name", "type": command|copy, "server": {"host", "port", "host_key", "user"},
"private_key", "create", "update", "delete", "stdin", "stdin_secret", "triggers",
"delete_before_replace", "timeout_create", "dial_error_limit", "per_dial_timeout", "source",
"remote_path"}]}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pulumi
from pulumi import automation as auto
from pulumi_command import remote

from deploy import toolchain


def program(resources: list[dict[str, Any]]) -> Any:
    def run() -> None:
        for r in resources:
            server = r["server"]
            connection = remote.ConnectionArgs(
                host=server["host"],
                port=server["port"],
                user=server.get("user", "root"),
                private_key=pulumi.Output.secret(r["private_key"]),
                host_key=server.get("host_key"),
                dial_error_limit=r.get("dial_error_limit", 1),
                per_dial_timeout=r.get("per_dial_timeout", 5),
            )
            opts = pulumi.ResourceOptions(
                delete_before_replace=r.get("delete_before_replace", False),
                custom_timeouts=pulumi.CustomTimeouts(create=r["timeout_create"]) if r.get("timeout_create") else None,
            )
            if r["type"] == "command":
                stdin = r.get("stdin")
                cmd = remote.Command(
                    r["name"],
                    connection=connection,
                    create=r.get("create"),
                    update=r.get("update"),
                    delete=r.get("delete"),
                    stdin=pulumi.Output.secret(stdin) if r.get("stdin_secret") else stdin,
                    triggers=r.get("triggers"),
                    add_previous_output_in_env=False,
                    opts=opts,
                )
                pulumi.export(r["name"], cmd.stdout)
            else:
                source = r["source"]
                asset: Any = pulumi.FileArchive(source) if Path(source).is_dir() else pulumi.FileAsset(source)
                remote.CopyToRemote(r["name"], connection=connection, source=asset, remote_path=r["remote_path"], opts=opts)

    return run


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    home = Path(spec["pulumi_home"])
    env = {k: v for k, v in toolchain.cli_env(home, f"file://{spec['dir']}/state").items() if k.startswith("PULUMI_")}
    env["PULUMI_CONFIG_PASSPHRASE"] = "conformance"
    Path(spec["dir"], "state").mkdir(parents=True, exist_ok=True)
    stack = auto.create_or_select_stack(
        stack_name=spec["stack"],
        project_name="conformance",
        program=program(spec["resources"]),
        opts=auto.LocalWorkspaceOptions(
            work_dir=spec["dir"],
            pulumi_home=str(home),
            env_vars=env,
            project_settings=auto.ProjectSettings(name="conformance", runtime="python"),
            pulumi_command=auto.PulumiCommand(root=str(toolchain.pulumi_root()), skip_version_check=True),
        ),
    )
    events: list[list[str]] = []
    output: list[str] = []
    errors: list[str] = []

    def on_event(event: Any) -> None:
        e = event.res_outputs_event or event.res_op_failed_event
        if e is not None and e.metadata.type.startswith("command:"):
            events.append([e.metadata.op.value, e.metadata.urn.rsplit("::", 1)[1], "failed" if event.res_op_failed_event else "ok"])

    common: dict[str, Any] = {"on_output": output.append, "on_event": on_event, "color": "never"}
    if spec.get("verbose_log"):
        # 8, the most the engine logs short of its own dump of every RPC payload (at 9, with every
        # secret in it, whichever provider runs): the provider's calls, what they did, and errors.
        common.update(log_verbosity=8, log_to_std_err=True, log_flow=True, on_error=errors.append)
    result: dict[str, Any] = {"ok": True}
    try:
        if spec["action"] == "up":
            stack.up(**common)
        elif spec["action"] == "preview":
            stack.preview(**common)
        else:
            stack.destroy(**common)
    except auto.errors.CommandError as e:
        result.update(ok=False, error=str(e))
    result.update(events=events, output="\n".join(output), engine_log="\n".join(errors))
    result["outputs"] = {k: v.value for k, v in stack.outputs().items()} if spec["action"] == "up" else {}
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
