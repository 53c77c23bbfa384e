"""Which Pulumi CLI and which `command` provider a deployment uses, and the environment it runs in.

- The CLI: `pulumi` on PATH, else the one lab/toolchain.sh builds into the cache.
- The provider: the official pulumi-resource-command 1.2.1 where it is installed in the user's
  PULUMI_HOME (`$PULUMI_HOME`, else ~/.pulumi); else ours (command_provider/), installed into a
  project-local PULUMI_HOME (`.pulumi-home/` in the checkout), never into the user's.
  `JIJI_COMMAND_PROVIDER=jiji` or `=official` insists on one (tests and benchmarks compare them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PROJECT_HOME = REPO / ".pulumi-home"
PLUGIN_VERSION = "1.2.1"
# The first lines of our launcher: how an installed plugin is known to be ours.
_MARK = "# jiji-net command provider"


def versions() -> dict[str, str]:
    """lab/versions.env: the pinned versions of what the toolchain builds."""
    lines = (REPO / "lab" / "versions.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def cache_dir() -> Path:
    """Where lab/toolchain.sh keeps its heavy builds (JIJI_CACHE)."""
    return Path(os.environ.get("JIJI_CACHE", "/var/cache/jiji-net"))


def pulumi_root() -> Path:
    """The directory whose bin/ holds the `pulumi` CLI."""
    on_path = shutil.which("pulumi")
    if on_path:
        return Path(on_path).resolve().parent.parent
    built = cache_dir() / "pulumi" / f"v{versions()['PULUMI_VERSION']}"
    if not (built / "bin" / "pulumi").exists():
        raise SystemExit(f"jiji-net: no Pulumi CLI on PATH or in {built}/bin: run `bash lab/toolchain.sh pulumi-cli`")
    return built


def plugin_file(home: Path) -> Path:
    """Where `pulumi plugin install resource command 1.2.1` puts the plugin in PULUMI_HOME `home`."""
    return home / "plugins" / f"resource-command-v{PLUGIN_VERSION}" / "pulumi-resource-command"


def _is_ours(plugin: Path) -> bool:
    with open(plugin, "rb") as f:
        return _MARK.encode() in f.read(256)


def user_home() -> Path:
    return Path(os.environ.get("PULUMI_HOME") or Path.home() / ".pulumi")


@dataclass(frozen=True)
class Provider:
    home: Path  # the PULUMI_HOME the CLI runs with
    description: str


def choose_provider() -> Provider:
    wanted = os.environ.get("JIJI_COMMAND_PROVIDER", "")
    if wanted not in ("", "jiji", "official"):
        raise SystemExit(f"jiji-net: JIJI_COMMAND_PROVIDER={wanted!r}: use 'jiji', 'official' or leave it unset")
    official = plugin_file(user_home())
    if wanted != "jiji" and official.exists() and not _is_ours(official):
        return Provider(user_home(), f"official pulumi-resource-command {PLUGIN_VERSION} ({official})")
    if wanted == "official":
        raise SystemExit(f"jiji-net: JIJI_COMMAND_PROVIDER=official, but {official} is not the official plugin")
    install_ours(PROJECT_HOME)
    return Provider(PROJECT_HOME, f"jiji-net's command provider as command {PLUGIN_VERSION} (command_provider/)")


def launcher() -> str:
    """The plugin file: runs command_provider with this checkout's Python and sources."""
    return (
        "#!/bin/sh\n"
        f"{_MARK} (command_provider/ of {REPO}), installed by deploy/toolchain.py\n"
        f'PYTHONPATH="{REPO}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{sys.executable}" -m command_provider "$@"\n'
    )


def install_ours(home: Path) -> None:
    """Installs the launcher as plugin `command` 1.2.1 in `home`, unless it is there already."""
    plugin, text = plugin_file(home), launcher()
    if plugin.exists() and plugin.read_text() == text:
        return
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        script = Path(tmp) / "pulumi-resource-command"
        script.write_text(text)
        script.chmod(0o755)
        argv = [str(pulumi_root() / "bin" / "pulumi"), "plugin", "install", "resource", "command", PLUGIN_VERSION,
                "--file", str(script), "--reinstall"]  # fmt: skip
        out = subprocess.run(argv, capture_output=True, text=True, env=cli_env(home))
        if out.returncode != 0:
            raise SystemExit(f"jiji-net: installing our command provider into {home} failed:\n{out.stderr}")


def cli_env(home: Path, backend: str | None = None) -> dict[str, str]:
    """The CLI's environment: no update check, no plugin download, this PULUMI_HOME, and the
    backend when given."""
    env = {
        **os.environ,
        "PULUMI_HOME": str(home),
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
    }
    if backend:
        env["PULUMI_BACKEND_URL"] = backend
    return env


def project_dir(path: Path, program: Path = REPO) -> Path:
    """The directory the CLI runs in. Outside the program's directory it gets the program's
    project file (its config schema, the one place settings are typed) with the stack's config
    beside it."""
    path = path.resolve()
    if path == program.resolve():
        return path
    project = yaml.safe_load((program / "Pulumi.yaml").read_text())
    project.pop("stackConfigDir", None)
    project["runtime"] = "python"
    path.mkdir(parents=True, exist_ok=True)
    source = "the repository's Pulumi.yaml" if program.resolve() == REPO else str(program.resolve() / "Pulumi.yaml")
    text = f"# Written by `python -m deploy` from {source}; edit that one.\n" + yaml.safe_dump(project, sort_keys=False)
    target = path / "Pulumi.yaml"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
    return path
