"""Runs the program against the lab the way a user would: through the real Pulumi engine when it
is installed, else through the stand-in (mocks + tests/labprovider.py). Both answer the same
questions (what ran, the outputs), and each run says which path it took.

The real path needs `pulumi`, its `pulumi-language-python` (next to it or on PATH) and the
`command` 1.2.1 resource plugin installed in PULUMI_HOME, as on a user's machine; nothing here
builds or installs them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from tests.harness import REPO, pulumi_bin_dir
from tests.labprovider import CommandFailed, LabProvider
from tests.program import evaluate

COMMAND_PLUGIN = "1.2.1"


@dataclass
class Run:
    outputs: dict[str, Any]
    actions: list[tuple[str, str]]  # (op, resource name) of every custom resource that was not "same"
    seconds: float
    log: str = ""
    counts: dict[str, int] = field(default_factory=dict)


class Engine(Protocol):
    path: str

    def up(self, config: dict[str, Any], replace: list[str] | None = None) -> Run: ...
    def destroy(self) -> Run: ...
    def close(self) -> None: ...


def real_engine() -> str | None:
    """A description of the installed real toolchain, or None when part of it is missing."""
    try:
        bindir = pulumi_bin_dir()
    except RuntimeError:
        return None
    pulumi = bindir / "pulumi"
    if not (bindir / "pulumi-language-python").exists() and not shutil.which("pulumi-language-python"):
        return None
    listed = subprocess.run([str(pulumi), "plugin", "ls", "--json"], capture_output=True, text=True, env=_env(None))
    try:
        plugins = json.loads(listed.stdout or "[]")
    except ValueError:
        return None
    if not any(p.get("name") == "command" and p.get("version") == COMMAND_PLUGIN for p in plugins or []):
        return None
    version = subprocess.run([str(pulumi), "version"], capture_output=True, text=True).stdout.strip()
    return f"real Pulumi engine {version} with pulumi-resource-command {COMMAND_PLUGIN}"


def _env(state: Path | None) -> dict[str, str]:
    env = {
        **os.environ,
        "PATH": f"{pulumi_bin_dir()}:{os.environ['PATH']}",
        "PULUMI_CONFIG_PASSPHRASE": "",
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
    }
    if state is not None:
        env["PULUMI_BACKEND_URL"] = f"file://{state}"
    return env


def make_engine(stack: str) -> Engine:
    """The real engine when installed, else the stand-in; prints which, so the test log says.
    JIJI_ENGINE=stand-in picks the stand-in even where the real engine is installed."""
    real = None if os.environ.get("JIJI_ENGINE") == "stand-in" else real_engine()
    engine: Engine = RealEngine(stack, real) if real else StandIn()
    print(f"\nengine path: {engine.path}")
    return engine


class StandIn:
    path = "stand-in: Pulumi mocks + tests/labprovider.py (the real language host or command provider is not installed)"

    def __init__(self) -> None:
        self.provider = LabProvider()

    def up(self, config: dict[str, Any], replace: list[str] | None = None) -> Run:
        started = time.monotonic()
        self.provider.begin(set(replace or ()))
        try:
            result = evaluate(config, self.provider)
        except CommandFailed:
            # As the engine reports it: every step that failed, not the first exception seen.
            failed = CommandFailed("\n".join(self.provider.errors))
            failed.actions = list(self.provider.actions)
            raise failed from None
        self.provider.finish()
        return Run(result.outputs, list(self.provider.actions), time.monotonic() - started)

    def destroy(self) -> Run:
        started = time.monotonic()
        self.provider.begin()
        self.provider.destroy()
        return Run({}, list(self.provider.actions), time.monotonic() - started)

    def close(self) -> None:
        self.provider.close()


class RealEngine:
    """`pulumi up` / `destroy` of the project in this repository, on a throwaway local-backend
    stack whose config file lives in a temporary directory (the repository stays clean)."""

    def __init__(self, stack: str, description: str) -> None:
        self.path = description
        self.stack = stack
        self.dir = Path(tempfile.mkdtemp(prefix="jiji-engine-"))
        (self.dir / "state").mkdir()
        self.config_file = self.dir / f"Pulumi.{stack}.yaml"
        # --event-log (what each step did, as JSON lines) exists only with this set.
        self.env = {**_env(self.dir / "state"), "PULUMI_DEBUG_COMMANDS": "true"}
        self._secret: tuple[str, Any] | None = None  # (the key, its ciphertext in the config file)
        self.cli("stack", "init")

    def cli(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 1800
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(pulumi_bin_dir() / "pulumi"), "--cwd", str(REPO), *args, "--non-interactive"]
        if args[0] != "plugin":
            argv += ["--stack", self.stack]
        if args[0] in ("up", "preview", "destroy", "config"):
            argv += ["--config-file", str(self.config_file)]
        out = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and out.returncode != 0:
            raise CommandFailed(f"pulumi {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def _write_config(self, config: dict[str, Any]) -> None:
        """The stack's config file: plain values as given, the SSH key set (encrypted) by the CLI
        whenever it changes."""
        current = (yaml.safe_load(self.config_file.read_text()) if self.config_file.exists() else None) or {}
        values = {f"jiji-net:{k}": v for k, v in config.items() if k != "ssh_private_key"}
        if self._secret is None or self._secret[0] != config["ssh_private_key"]:
            self.config_file.write_text(json.dumps({**current, "config": values}))
            self.cli("config", "set", "--secret", "ssh_private_key", stdin=config["ssh_private_key"])
            current = yaml.safe_load(self.config_file.read_text())
            self._secret = (config["ssh_private_key"], current["config"]["jiji-net:ssh_private_key"])
        values["jiji-net:ssh_private_key"] = self._secret[1]
        self.config_file.write_text(json.dumps({**current, "config": values}, indent=1))

    def up(self, config: dict[str, Any], replace: list[str] | None = None, preview: bool = False) -> Run:
        self._write_config(config)
        events = self.dir / "events.jsonl"
        events.unlink(missing_ok=True)
        urns = [self.urn(name) for name in replace or ()]
        args = ["preview", "--diff"] if preview else ["up", "--yes", "--skip-preview"]
        started = time.monotonic()
        out = self.cli(*args, "--event-log", str(events), *(a for u in urns for a in ("--replace", u)), check=False)
        seconds = time.monotonic() - started
        actions = _actions(events)
        if out.returncode != 0:
            failed = CommandFailed(f"pulumi {args[0]} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
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
        events = self.dir / "events.jsonl"
        events.unlink(missing_ok=True)
        started = time.monotonic()
        out = self.cli("destroy", "--yes", "--skip-preview", "--event-log", str(events), check=False)
        if out.returncode != 0:
            raise CommandFailed(f"pulumi destroy failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return Run({}, _actions(events), time.monotonic() - started, log=out.stdout + out.stderr)

    def close(self) -> None:
        self.cli("stack", "rm", "--yes", "--force", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def _actions(events: Path) -> list[tuple[str, str]]:
    """(op, name) of each custom resource step the engine finished, from its event log."""
    out: list[tuple[str, str]] = []
    if not events.exists():
        return out
    for line in events.read_text().splitlines():
        event = json.loads(line)
        metadata = (event.get("resOutputsEvent") or {}).get("metadata")
        if not metadata or metadata.get("op") in ("same", "read", "refresh"):
            continue
        if metadata.get("type", "").startswith("command:remote:"):
            out.append((metadata["op"], metadata["urn"].rsplit("::", 1)[1]))
    return out
