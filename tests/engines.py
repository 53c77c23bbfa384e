"""Runs the program against the lab the way a user would: through the real Pulumi engine, as
`python -m deploy` runs it (the Automation API with the program inline, so no language host),
with the official `command` plugin where it is installed and else ours (deploy/toolchain.py).
Each engine says which CLI and which provider ran; every lab test prints it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deploy import toolchain
from tests.harness import REPO


class CommandFailed(RuntimeError):
    """A run that failed; `actions` are the steps that finished before it stopped."""

    actions: list[tuple[str, str]] = []


@dataclass
class Run:
    outputs: dict[str, Any]
    actions: list[tuple[str, str]]  # (op, resource name) of every custom resource that was not "same"
    seconds: float
    log: str = ""
    counts: dict[str, int] = field(default_factory=dict)


def make_engine(stack: str, program: Path = REPO) -> RealEngine:
    engine = RealEngine(stack, program)
    print(f"\nengine path: {engine.path}")
    return engine


class RealEngine:
    """`python -m deploy up|preview|destroy` of the mesh program on a throwaway local-backend stack
    whose project file and config live in a temporary directory (the repository stays clean)."""

    def __init__(self, stack: str, program: Path = REPO) -> None:
        """`program`: a directory with Pulumi.yaml and __main__.py over the mesh component
        (examples/...), run as `python -m deploy --program` runs it; the mesh program by default."""
        self.provider = toolchain.choose_provider()
        root = toolchain.pulumi_root()
        version = subprocess.run([str(root / "bin" / "pulumi"), "version"], capture_output=True, text=True).stdout.strip()
        self.path = (
            f"real Pulumi engine {version} ({root / 'bin' / 'pulumi'}, Automation API, inline program)"
            f" with {self.provider.description}"
        )
        self.stack = stack
        self.program = program
        self.dir = toolchain.project_dir(Path(tempfile.mkdtemp(prefix="jiji-engine-")), program)
        (self.dir / "state").mkdir()
        self.config_file = self.dir / f"Pulumi.{stack}.yaml"
        self.env = {**toolchain.cli_env(self.provider.home, f"file://{self.dir}/state"), "PULUMI_CONFIG_PASSPHRASE": ""}
        self._secret: tuple[str, Any] | None = None  # (the key, its ciphertext in the config file)
        self.cli("stack", "init")

    def cli(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(toolchain.pulumi_root() / "bin" / "pulumi"), *args, "--non-interactive", "--stack", self.stack]
        out = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=self.env, cwd=self.dir, timeout=600)
        if check and out.returncode != 0:
            raise CommandFailed(f"pulumi {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def _write_config(self, config: dict[str, Any]) -> None:
        """The stack's config file: plain values as given, the SSH key set (encrypted) by the CLI
        whenever it changes."""
        current = (yaml.safe_load(self.config_file.read_text()) if self.config_file.exists() else None) or {}
        # A key with its namespace (another program's own setting) goes in as written.
        values = {k if ":" in k else f"jiji-net:{k}": v for k, v in config.items() if k != "ssh_private_key"}
        if self._secret is None or self._secret[0] != config["ssh_private_key"]:
            self.config_file.write_text(json.dumps({**current, "config": values}))
            # Namespaced: in another program's project a bare key would be that project's.
            self.cli("config", "set", "--secret", "jiji-net:ssh_private_key", stdin=config["ssh_private_key"])
            current = yaml.safe_load(self.config_file.read_text())
            self._secret = (config["ssh_private_key"], current["config"]["jiji-net:ssh_private_key"])
        values["jiji-net:ssh_private_key"] = self._secret[1]
        self.config_file.write_text(json.dumps({**current, "config": values}, indent=1))

    def _deploy(self, action: str, *extra: str) -> tuple[subprocess.CompletedProcess[str], list[tuple[str, str]], float]:
        events = self.dir / "events.jsonl"
        events.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "deploy", action, "--stack", self.stack, "--dir", str(self.dir),
                "--event-log", str(events), "--program", str(self.program), *extra]  # fmt: skip
        started = time.monotonic()
        out = subprocess.run(argv, capture_output=True, text=True, env=self.env, cwd=REPO, timeout=1800)
        return out, _actions(events), time.monotonic() - started

    def up(self, config: dict[str, Any], replace: list[str] | None = None, preview: bool = False) -> Run:
        self._write_config(config)
        extra = [a for name in replace or () for a in ("--replace", self.urn(name))]
        out, actions, seconds = self._deploy("preview" if preview else "up", *(["--diff"] if preview else []), *extra)
        if out.returncode != 0:
            failed = CommandFailed(f"{'preview' if preview else 'up'} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
            failed.actions = actions
            raise failed
        outputs = {} if preview else json.loads(self.cli("stack", "output", "--json", "--show-secrets").stdout)
        return Run(outputs, actions, seconds, log=out.stdout + out.stderr)

    def preview(self, config: dict[str, Any]) -> Run:
        return self.up(config, preview=True)

    def urn(self, name: str) -> str:
        resources = json.loads(self.cli("stack", "export").stdout)["deployment"]["resources"]
        found = [r["urn"] for r in resources if r["urn"].rsplit("::", 1)[1] == name]
        assert len(found) == 1, f"{name}: {found}"
        return found[0]

    def state(self) -> str:
        return self.cli("stack", "export", "--show-secrets").stdout

    def destroy(self) -> Run:
        out, actions, seconds = self._deploy("destroy")
        if out.returncode != 0:
            raise CommandFailed(f"destroy failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return Run({}, actions, seconds, log=out.stdout + out.stderr)

    def close(self) -> None:
        self.cli("stack", "rm", "--yes", "--force", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


Engine = RealEngine


def _actions(events: Path) -> list[tuple[str, str]]:
    """(op, name) of each custom resource step the engine finished, from the event log."""
    out: list[tuple[str, str]] = []
    if not events.exists():
        return out
    for line in events.read_text().splitlines():
        metadata = (json.loads(line).get("resOutputsEvent") or {}).get("metadata")
        if not metadata or metadata.get("op") in ("same", "read", "refresh"):
            continue
        if metadata.get("type", "").startswith("command:remote:"):
            out.append((metadata["op"], metadata["urn"].rsplit("::", 1)[1]))
    return out
