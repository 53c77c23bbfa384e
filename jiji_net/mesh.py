"""The mesh as ComponentResources: thin wiring of plan, render and steps into remote resources.

Per server: its component, the `host` step (checks, WireGuard key), two uploads (the staging
tree: the step library, its helper and the two zipapps, one directory archive; the mesh table; a third, the
Corrosion binary, unless servers download it) and the `network`, `wireguard`, `corrosion` and
`dns` steps: 8 or 9. Per mesh: the `registry` step and the engine gate, which runs nothing: it
waits for every host step, and every network step waits for it. Each step is a
`command:remote:Command` whose stdin is its script (see steps.py).

What the engine may do to these resources is part of their design:
- every Command is `delete_before_replace`: a `--replace` removes, then applies again, and
  never runs an old delete after the new create;
- a step's remove acts only while the server's stamp names its resource, so a renamed server
  (new resource names, same index) keeps working: its new steps take over the stamps and the
  old steps' deletes leave everything alone;
- a server marked `gone` keeps its resources with `ignore_changes=["*"]` and
  `retain_on_delete`: nothing dials it, and removing it from the stack later drops them from
  state without a delete;
- `add_previous_output_in_env` is off (sshd refuses the variables, and every update warned).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
from jiji_common import layout
from pulumi_command import remote

from . import artifacts, render, steps, topology
from .artifacts import Artifact
from .model import MeshSettings
from .model import Server as ServerSpec
from .plan import ServerPlan, configured_endpoint, plan_access, plan_addresses


@dataclass(frozen=True)
class Uploads:
    """Local files servers get. `corrosion` is None when servers download the pinned release;
    `steplib` is the shell library the steps source and `helper` the zipapp it runs for what is
    more than shell. `staged` is the tree that carries both and the two zipapps in one upload
    (artifacts.staging_tree); the binary and the mesh table travel alone, since they change for
    other reasons (a release; a peer).

    The helper is not a `jiji-net` subcommand: the network and corrosion steps run before the dns
    step installs the tool, and a library keyed on the tool's hash would re-run every step of
    every server on any change to the tool."""

    steplib: Artifact
    helper: Artifact
    dns: Artifact
    tool: Artifact
    corrosion: Artifact | None
    staged: Artifact

    @staticmethod
    def of(steplib: Artifact, helper: Artifact, dns: Artifact, tool: Artifact, corrosion: Artifact | None) -> Uploads:
        tree = {steps.staged_name(n, a.sha256): a for n, a in (("steplib", steplib), ("jiji-dns", dns), ("jiji-net", tool))}
        tree[steps.helper_name(helper.sha256)] = helper
        staged = artifacts.staging_tree(layout.STAGING.rsplit("/", 1)[1], tree)
        return Uploads(steplib, helper, dns, tool, corrosion, staged)


class _Remote:
    """Makes one server's remote resources: its connection, names prefixed with its name, and the
    resource options every step has."""

    def __init__(self, server: str, connection: remote.ConnectionArgs, gone: bool) -> None:
        self.server = server
        self.connection = connection
        self.gone = gone

    def _opts(self, parent: pulumi.Resource, depends_on: Sequence[pulumi.Resource]) -> pulumi.ResourceOptions:
        if self.gone:
            return pulumi.ResourceOptions(
                parent=parent, depends_on=list(depends_on), ignore_changes=["*"], retain_on_delete=True
            )
        return pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on), delete_before_replace=True)

    def step(
        self,
        name: str,
        parent: pulumi.Resource,
        step: pulumi.Output[steps.Step] | steps.Step,
        depends_on: Sequence[pulumi.Resource] = (),
        resource_name: str | None = None,
    ) -> remote.Command:
        # A step known now goes in as plain strings: three Outputs per resource fewer for the SDK to
        # schedule and await (they are most of its cost at a few hundred servers).
        create: pulumi.Input[str]
        delete: pulumi.Input[str]
        script: pulumi.Input[str]
        if isinstance(step, steps.Step):
            create, delete, script = step.create, step.delete, step.script
        else:
            create, delete, script = step.apply(lambda s: s.create), step.apply(lambda s: s.delete), step.apply(lambda s: s.script)
        return remote.Command(
            resource_name or f"{self.server}-{name}",
            connection=self.connection,
            create=create,
            delete=delete,
            stdin=script,
            add_previous_output_in_env=False,
            opts=self._opts(parent, depends_on),
        )

    def upload(
        self,
        name: str,
        parent: pulumi.Resource,
        source: pulumi.Input[pulumi.FileAsset] | pulumi.FileArchive,
        remote_path: str,
        depends_on: Sequence[pulumi.Resource],
    ) -> remote.CopyToRemote:
        """A local file onto the server's staging directory; steps check its SHA-256 and install it.
        Each step's remove deletes the uploads it installs from."""
        return remote.CopyToRemote(
            f"{self.server}-{name}-upload",
            connection=self.connection,
            source=source,
            remote_path=remote_path,
            opts=self._opts(parent, depends_on),
        )


class Server(pulumi.ComponentResource):
    """One server's part of the mesh. Made in two steps: the constructor checks the host and makes
    its WireGuard key; `join` adds everything that needs the other servers' public keys."""

    def __init__(
        self,
        spec: ServerSpec,
        plan: ServerPlan,
        settings: MeshSettings,
        ssh_key: pulumi.Input[str],
        uploads: Uploads,
        parent: pulumi.Resource,
    ) -> None:
        super().__init__("jiji:network:Server", spec.name, None, pulumi.ResourceOptions(parent=parent))
        self.spec, self.plan, self.settings, self.uploads = spec, plan, settings, uploads
        connection = remote.ConnectionArgs(
            host=spec.host,
            port=spec.port,
            user=spec.user,
            private_key=ssh_key,
            host_key=spec.host_key,
            dial_error_limit=5,
            per_dial_timeout=10,
        )
        self.remote = _Remote(spec.name, connection, spec.gone)
        self.owner = lambda step: f"{spec.name}-{step}"
        self.host = self.remote.step("host", self, steps.host_step(self.owner("host"), settings.container_engine))
        self.public_key: pulumi.Output[str] = self.host.stdout.apply(lambda out: out.strip().splitlines()[-1])

    def join(
        self,
        seeds: list[ServerPlan],
        table: pulumi.Output[Artifact],
        registry_ready: list[pulumi.Resource],
        gate: pulumi.Resource,
    ) -> None:
        """`table` waits for every live server's public key (it is made from them); it carries no
        resource dependencies, which would be N per server, N*N in all. `gate` is done once every
        live server's host step passed."""
        r, settings, plan, spec, uploads = self.remote, self.settings, self.plan, self.spec, self.uploads
        own, lib = self.owner, uploads.steplib.sha256
        # The tree's top directory is `staging`, copied into the state directory.
        staged_up = r.upload("staged", self, pulumi.FileArchive(uploads.staged.path), layout.STATE_DIR, [self.host])
        table_up = r.upload(
            "mesh", self, table.apply(lambda t: pulumi.FileAsset(t.path)), layout.MESH_TABLE, [self.host]
        )
        network = r.step(
            "network", self, steps.network_step(own("network"), lib, settings, plan), [self.host, staged_up, gate]
        )
        wireguard = r.step(
            "wireguard",
            self,
            table.apply(lambda t: steps.wireguard_step(own("wireguard"), lib, settings, plan, spec, t.sha256)),
            [self.host, network, table_up],
        )
        corrosion_deps: list[pulumi.Resource] = [wireguard]
        if uploads.corrosion is not None:
            binary_sha = uploads.corrosion.sha256
            corrosion_deps.append(self._upload_artifact("corrosion", uploads.corrosion))
        else:
            binary_sha = settings.corrosion.sha256 or ""
        corrosion = r.step(
            "corrosion",
            self,
            steps.corrosion_step(own("corrosion"), lib, settings, plan, seeds, binary_sha),
            corrosion_deps,
        )
        self.dns = r.step(
            "dns",
            self,
            steps.dns_step(own("dns"), lib, settings, plan, uploads.dns.sha256, uploads.tool.sha256),
            [corrosion, staged_up],
        )
        registry_ready.append(self.dns)
        self.register_outputs({"public_key": self.public_key})

    def _upload_artifact(self, name: str, artifact: Artifact) -> remote.CopyToRemote:
        """A local file onto its content-keyed staging path, where its step checks and installs it."""
        source = pulumi.FileAsset(artifact.path)
        return self.remote.upload(name, self, source, steps.staged_path(name, artifact.sha256), [self.host])


@dataclass(frozen=True, kw_only=True)
class MeshArgs:
    """What a mesh is made of. `settings` and `servers` are model values, which only
    validation.parse (or code that builds them with the right types) makes; `uploads` defaults
    to the step library and zipapps built from this checkout, and the Corrosion binary at
    `settings.corrosion.local_path` when servers do not download it."""

    settings: MeshSettings
    servers: Sequence[ServerSpec]
    ssh_private_key: pulumi.Input[str]
    uploads: Uploads | None = None


class Mesh(pulumi.ComponentResource):
    """The mesh: one `jiji:network:Server` per server and the registry step.

    Outputs, as attributes and registered once: `cluster_cidr`, `domain`, `servers` (per live
    server: index, subnet, mesh and DNS address, container range, public key, endpoint, SSH) and
    `outputs`, the three in one dict (what the stack exports as `mesh`)."""

    def __init__(self, name: str, args: MeshArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        settings = args.settings
        # Before anything is registered: a missing local binary stops the program with nothing made.
        uploads = args.uploads or _built_uploads(settings)
        super().__init__("jiji:network:Mesh", name, None, opts)
        specs = sorted(args.servers, key=lambda s: s.index)
        plans = plan_addresses(settings, specs)
        live = [s for s in specs if not s.gone]
        self.server_components = {
            s.name: Server(s, plans[s.name], settings, args.ssh_private_key, uploads, parent=self) for s in specs
        }
        public_keys = {s.name: self.server_components[s.name].public_key for s in live}
        names = [s.name for s in live]
        keys = pulumi.Output.all(*[public_keys[n] for n in names]).apply(lambda ks: dict(zip(names, ks, strict=True)))
        table: pulumi.Output[Artifact] = pulumi.Output.from_input(_mesh_table(settings, live, plans, public_keys))  # type: ignore[arg-type]
        live_plans = [plans[s.name] for s in live]
        # Run through the first live server, as the registry step is. Every host step checks its
        # server first (a switch of container engine is refused there while the old engine has
        # containers on jiji); no network step anywhere runs before all of them passed.
        registrar = self.server_components[live[0].name]
        gate = registrar.remote.step(
            "engine-gate",
            self,
            steps.engine_gate_step(),
            [self.server_components[s.name].host for s in live],
            f"{name}-engine-gate",
        )
        ready: list[pulumi.Resource] = []
        for s in specs:
            self.server_components[s.name].join(
                topology.seeds_of(plans[s.name], live_plans), table, ready if not s.gone else [], gate
            )
        # The registry's rows are written once, through the first live server (state keeps them
        # once, not once per server); every server's Corrosion and tool must be up first.
        rows = keys.apply(lambda k: _registry_rows(settings, live, plans, k))
        registrar.remote.step(
            "registry",
            self,
            rows.apply(lambda text: steps.registry_step(f"{name}-registry", uploads.steplib.sha256, text)),
            ready,
            f"{name}-registry",
        )
        self.cluster_cidr: str = settings.cluster_cidr
        self.domain: str = settings.domain
        self.servers: dict[str, dict[str, Any]] = {
            s.name: _server_output(settings, s, plans[s.name], public_keys[s.name]) for s in live
        }
        # What `jiji-net access config` needs beside the servers; None while the feature is off.
        self.access: dict[str, Any] | None = _access_output(settings)
        self.outputs: dict[str, Any] = {
            "cluster_cidr": self.cluster_cidr,
            "domain": self.domain,
            "servers": self.servers,
            "access": self.access,
            # What `jiji-net prometheus targets` needs; None while metrics are off.
            "metrics": {"host_port": settings.metrics_port, "dns_port": settings.dns_metrics_port}
            if settings.metrics_enabled
            else None,
        }
        self.register_outputs(self.outputs)


def _built_uploads(settings: MeshSettings) -> Uploads:
    """The files servers get, built from this checkout (the zipapps) or taken from the settings."""
    built = artifacts.built_zipapps()
    local = settings.corrosion.local_path
    helper = built["step"]
    return Uploads.of(
        steplib=artifacts.built_file("steplib.sh", render.step_library(steps.helper_path(helper.sha256), helper.sha256)),
        helper=helper,
        dns=built["dns"],
        tool=built["tool"],
        corrosion=artifacts.local_binary(local) if local else None,
    )


async def _mesh_table(
    settings: MeshSettings, live: list[ServerSpec], plans: dict[str, ServerPlan], keys: dict[str, pulumi.Output[str]]
) -> Artifact:
    """The mesh table as a file asset, always a known value: pulumi-command's CopyToRemote refuses
    an unknown source even in a preview, so a key not known yet (a new server, before its host
    step ran) is written as a placeholder. A real run waits for every key."""
    known: dict[str, str] = {}
    for name, key in keys.items():
        value = await key.future() if await key.is_known() else None
        known[name] = value or "(known-after-its-host-step)"
    text = render.mesh_table(topology.mesh_rows(settings, live, plans, known))
    return artifacts.stack_file(pulumi.get_project(), pulumi.get_stack(), "mesh.tsv", text)


def _server_output(
    settings: MeshSettings, spec: ServerSpec, plan: ServerPlan, public_key: pulumi.Output[str]
) -> dict[str, Any]:
    return {
        "index": plan.index,
        "subnet": plan.subnet,
        "mesh_address": plan.mesh_address,
        "container_range": plan.container_range,
        "dns_address": plan.mesh_address,
        "public_key": public_key,
        "endpoint": configured_endpoint(spec, settings.wireguard_port),
        "ssh": {"host": spec.host, "port": spec.port, "user": spec.user, "host_key": spec.host_key},
    }


def _registry_rows(
    settings: MeshSettings, live: list[ServerSpec], plans: dict[str, ServerPlan], keys: dict[str, str]
) -> str:
    servers = [
        {
            "id": s.name,
            "hostname": s.host,
            "subnet": plans[s.name].subnet,
            "wireguard_ip": plans[s.name].mesh_address,
            "wireguard_pubkey": keys[s.name],
            "endpoints": [e for e in (s.endpoint, s.private_address) if e],
        }
        for s in live
    ]
    metadata = {
        "cluster_cidr": settings.cluster_cidr,
        "subnet_prefix_len": settings.subnet_prefix_len,
        "domain": settings.domain,
    }
    access = _access_output(settings)
    peers = None if access is None else [{"name": name, **peer} for name, peer in access["peers"].items()]
    rows = {"servers": servers, "metadata": metadata, "access_peers": peers}
    return json.dumps(rows, indent=1, sort_keys=True) + "\n"


def _access_output(settings: MeshSettings) -> dict[str, Any] | None:
    """The access range and each declared access peer's address, key, expiry (0: none) and allow."""
    if not settings.access_enabled:
        return None
    addresses = plan_access(settings, settings.access_peers)
    peers = {
        p.name: {
            "address": addresses[p.name],
            "public_key": p.public_key,
            "expires_at": p.expires_at or 0,
            "allow": list(p.allow),
        }
        for p in sorted(settings.access_peers, key=lambda p: p.name)
    }
    return {"cidr": settings.access_cidr, "idle_timeout": settings.access_idle_timeout, "peers": peers}
