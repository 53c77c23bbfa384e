"""Runs `__main__.py` under Pulumi's mocks and records what it registers.

For every resource: its type token, name, inputs (secrets unwrapped), the type of its parent and
the names of the resources it depends on (explicitly or through inputs). A `provider` callable
may answer for custom resources; the default gives each WireGuard key command a made-up public
key, as the real command's stdout would.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import runpy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks

from tests.harness import REPO

Provider = Callable[[str, str, dict[str, Any]], dict[str, Any]]


@dataclass
class Registration:
    typ: str
    name: str
    parent_type: str
    dependencies: list[str]
    inputs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evaluation:
    resources: dict[str, Registration]
    outputs: dict[str, Any]

    def commands(self) -> dict[str, Registration]:
        return {n: r for n, r in self.resources.items() if r.typ == "command:remote:Command"}


def fake_public_key(name: str) -> str:
    return base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()


def fake_provider(typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    if typ == "command:remote:Command":
        return {"stdout": fake_public_key(name) + "\n" if name.endswith("-host") else "", "stderr": ""}
    return {}


_SECRET_SIG = "4dabf18193072939515e22adb298388d"  # Pulumi's marker of a secret value on the wire


def _plain(value: Any) -> Any:
    """Inputs as comparable data: assets by path and content hash (as the engine compares them),
    secrets as {"secret": value}."""
    if isinstance(value, pulumi.FileAsset):
        return {"file_asset": value.path, "hash": hashlib.sha256(Path(value.path).read_bytes()).hexdigest()}
    if isinstance(value, pulumi.FileArchive):
        return {"file_archive": value.path, "hash": _tree_hash(Path(value.path))}
    if isinstance(value, dict):
        if _SECRET_SIG in value:
            return {"secret": _plain(value["value"])}
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _tree_hash(root: Path) -> str:
    """A directory archive's hash over its files' relative names and bytes (what the engine's
    comparison depends on; its own hash differs in form, not in what changes it)."""
    digest = hashlib.sha256()
    for f in sorted(x for x in root.rglob("*") if x.is_file()):
        digest.update(f"{f.relative_to(root)}\0".encode() + hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()


class _Mocks(pulumi.runtime.Mocks):
    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.inputs: dict[str, dict[str, Any]] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        plain = self.inputs[args.name] = _plain(args.inputs)
        outputs = dict(args.inputs)
        if args.custom:
            outputs.update(self.provider(args.typ, args.name, plain))
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


_GRAPH: dict[str, tuple[str, str, list[str]]] = {}
# The resource options the engine acts on, by resource name (tests of the graph read them).
OPTIONS: dict[str, dict[str, Any]] = {}
_original_register = pulumi_mocks.MockMonitor.RegisterResource


def _recording_register(self: Any, request: Any) -> Any:
    OPTIONS[request.name] = {
        "delete_before_replace": bool(request.deleteBeforeReplace),
        "ignore_changes": list(request.ignoreChanges),
        "retain_on_delete": bool(request.retainOnDelete),
    }
    response = _original_register(self, request)
    parent_type = request.parent.split("::")[2].split("$")[-1] if request.parent else ""
    deps = [urn.rsplit("::", 1)[1] for urn in request.dependencies]
    _GRAPH[request.name] = (request.type, parent_type, deps)
    return response


pulumi_mocks.MockMonitor.RegisterResource = _recording_register


def config_values(config: dict[str, Any]) -> dict[str, str]:
    return {f"jiji-net:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


def evaluate(
    config: dict[str, Any],
    provider: Provider = fake_provider,
    main_file: Path = REPO / "__main__.py",
    project: str = "jiji-net",
    own_config: dict[str, str] | None = None,
) -> Evaluation:
    """Runs the program once with `config` as the stack's `jiji-net:` config;
    `main_file` and `project` for another program over the mesh, with `own_config` its own keys (namespaced)."""
    _GRAPH.clear()
    OPTIONS.clear()
    # Earlier asyncio.run() calls in the same process leave no current loop; Pulumi needs one.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    mocks = _Mocks(provider)
    pulumi.runtime.set_mocks(mocks, project=project, stack="test", preview=False)
    values = {**config_values(config), **(own_config or {})}
    pulumi.runtime.set_all_config(values, secret_keys=["jiji-net:ssh_private_key"])
    exported: dict[str, Any] = {}
    resolved: dict[str, Any] = {}
    original = pulumi.export

    def capture(name: str, value: Any) -> None:
        exported[name] = value

    @pulumi.runtime.test
    def program() -> Any:
        pulumi.export = capture  # type: ignore[assignment]
        try:
            runpy.run_path(str(main_file), run_name="__main__")
        finally:
            pulumi.export = original  # type: ignore[assignment]
        return pulumi.Output.from_input(exported).apply(resolved.update)

    try:
        program()
    except BaseException:
        # Registrations still in flight (other servers' steps) finish before the loop closes, as
        # the engine lets running steps finish after an error.
        pending = asyncio.all_tasks(loop)
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        raise
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    resources = {
        name: Registration(typ, name, parent_type, deps, mocks.inputs.get(name, {}), OPTIONS.get(name, {}))
        for name, (typ, parent_type, deps) in _GRAPH.items()
        if typ != "pulumi:pulumi:Stack"  # registered only by the first run in a process
    }
    return Evaluation(resources, resolved)
