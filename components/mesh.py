"""The mesh as ComponentResources: thin wiring of plan, render and scripts into remote commands.

Every file a server gets travels as a command's stdin, so `pulumi preview --diff` shows it line
by line and a change is an in-place update. Units restart only when the hash of what they run
changes (the hash sits in the command string, because `depends_on` alone never re-runs a
command). Private keys are made on the servers; only public keys come back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi_command import remote

from . import render, scripts
from .artifacts import Artifact
from .model import MeshSettings
from .model import Server as ServerSpec
from .plan import Peer, ServerPlan, configured_endpoint, peers_of

SYSTEMD = "/etc/systemd/system"


@dataclass(frozen=True)
class Uploads:
    """Local files servers get. `corrosion` is None when servers download the pinned release."""

    dns: Artifact
    tool: Artifact
    corrosion: Artifact | None


def _sha256(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class _Commands:
    """Makes remote commands on one server: its connection, names prefixed with its name."""

    def __init__(self, server: str, connection: remote.ConnectionArgs) -> None:
        self.server = server
        self.connection = connection

    def run(
        self,
        name: str,
        parent: pulumi.Resource,
        *,
        create: str,
        delete: str | None = None,
        stdin: pulumi.Input[str] | None = None,
        depends_on: Sequence[pulumi.Resource] = (),
    ) -> remote.Command:
        return remote.Command(
            f"{self.server}-{name}",
            connection=self.connection,
            create=create,
            delete=delete,
            stdin=stdin,
            opts=pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on)),
        )

    def file(
        self,
        name: str,
        parent: pulumi.Resource,
        path: str,
        content: pulumi.Input[str],
        *,
        mode: str = "644",
        depends_on: Sequence[pulumi.Resource] = (),
    ) -> remote.Command:
        return self.run(
            name,
            parent,
            create=scripts.file_write(path, mode),
            delete=scripts.file_delete(path, systemd_unit=path.startswith(SYSTEMD)),
            stdin=content,
            depends_on=depends_on,
        )

    def service(
        self,
        name: str,
        parent: pulumi.Resource,
        unit: str,
        inputs_sha256: str,
        depends_on: Sequence[pulumi.Resource],
        ready_check: str | None = None,
    ) -> remote.Command:
        """A systemd unit enabled and running; restarted when `inputs_sha256` changes."""
        return self.run(
            name,
            parent,
            create=scripts.service_apply(unit, inputs_sha256, ready_check=ready_check),
            delete=scripts.service_delete(unit),
            depends_on=depends_on,
        )

    def install(
        self, name: str, parent: pulumi.Resource, artifact: Artifact, final: str, depends_on: Sequence[pulumi.Resource]
    ) -> remote.Command:
        """Uploads a local file to a content-keyed staging path, then checks and installs it."""
        staged = scripts.staged_path(name, artifact.sha256)
        upload = remote.CopyToRemote(
            f"{self.server}-{name}-upload",
            connection=self.connection,
            source=pulumi.FileAsset(artifact.path),
            remote_path=staged,
            triggers=[artifact.sha256],
            opts=pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on)),
        )
        return self.run(
            f"{name}-install",
            parent,
            create=scripts.artifact_install(staged, final, artifact.sha256),
            delete=scripts.artifact_delete(final, staged),
            depends_on=[upload],
        )


class ContainerNetwork(pulumi.ComponentResource):
    """Forwarding, NAT for traffic leaving the mesh, the firewall, and the engine's `jiji` network
    (or, with no engine, a plain bridge holding the mesh address)."""

    def __init__(
        self, cmd: _Commands, settings: MeshSettings, plan: ServerPlan, depends_on: Sequence[pulumi.Resource], parent: pulumi.Resource
    ) -> None:
        super().__init__("jiji:network:ContainerNetwork", f"{cmd.server}-network", None, pulumi.ResourceOptions(parent=parent))
        forward = cmd.run(
            "ip-forward", self, create=scripts.IP_FORWARD_SAVE, delete=scripts.IP_FORWARD_RESTORE, depends_on=depends_on
        )
        engine: list[pulumi.Resource] = []
        # With `none` there is no engine network: the bridge comes from the network unit.
        steps = {
            "docker": (scripts.docker_network_apply, scripts.DOCKER_NETWORK_DELETE),
            "podman": (scripts.podman_network_apply, scripts.PODMAN_NETWORK_DELETE),
        }
        if settings.container_engine in steps:
            apply, delete = steps[settings.container_engine]
            engine.append(
                cmd.run(
                    f"{settings.container_engine}-network",
                    self,
                    create=apply(plan.subnet, plan.mesh_address, settings.mtu),
                    delete=delete,
                    depends_on=[forward],
                )
            )
        script_text = render.network_script(settings, plan, scripts.BRIDGE)
        unit_text = render.network_unit()
        script = cmd.file("network-script", self, render.NETWORK_SCRIPT, script_text, mode="755", depends_on=depends_on)
        unit = cmd.file("network-unit", self, f"{SYSTEMD}/jiji-net-network.service", unit_text, depends_on=depends_on)
        self.service = cmd.service(
            "network-service", self, "jiji-net-network", _sha256(script_text, unit_text), [forward, script, unit, *engine]
        )
        self.register_outputs({})


class WireGuard(pulumi.ComponentResource):
    """jiji0.conf (no secret in it) applied live with `wg syncconf`; wg-quick@jiji0 enabled."""

    def __init__(
        self, cmd: _Commands, config: pulumi.Input[str], depends_on: Sequence[pulumi.Resource], parent: pulumi.Resource
    ) -> None:
        super().__init__("jiji:network:WireGuard", f"{cmd.server}-wireguard", None, pulumi.ResourceOptions(parent=parent))
        self.interface = cmd.run(
            "wg-conf", self, create=scripts.WG_CONF_APPLY, delete=scripts.WG_CONF_DELETE, stdin=config, depends_on=depends_on
        )
        self.register_outputs({})


class Corrosion(pulumi.ComponentResource):
    """The registry node: binary, data directory, config, schema and jiji-corrosion.service."""

    def __init__(
        self,
        cmd: _Commands,
        settings: MeshSettings,
        plan: ServerPlan,
        others: list[ServerPlan],
        binary: Artifact | None,
        depends_on: Sequence[pulumi.Resource],
        parent: pulumi.Resource,
    ) -> None:
        super().__init__("jiji:network:Corrosion", f"{cmd.server}-corrosion", None, pulumi.ResourceOptions(parent=parent))
        if binary is not None:
            installed = cmd.install("corrosion", self, binary, render.CORROSION_BINARY, depends_on)
            binary_sha = binary.sha256
        else:
            url, binary_sha = settings.corrosion.url or "", settings.corrosion.sha256 or ""
            staged = scripts.staged_path("corrosion", binary_sha)
            download = cmd.run(
                "corrosion-download",
                self,
                create=scripts.artifact_download(url, staged),
                delete=scripts.artifact_delete(staged),
                depends_on=depends_on,
            )
            installed = cmd.run(
                "corrosion-install",
                self,
                create=scripts.artifact_install(
                    staged, render.CORROSION_BINARY, binary_sha, member="corrosion" if url.endswith(".tar.gz") else None
                ),
                delete=scripts.artifact_delete(render.CORROSION_BINARY),
                depends_on=[download],
            )
        config_text = render.corrosion_config(settings, plan, others)
        schema_text = render.corrosion_schema()
        unit_text = render.corrosion_unit()
        # Deleting this directory deletes the node's copy of the registry: only on destroy or
        # when the server leaves the stack (the other nodes keep theirs).
        data = cmd.run(
            "corrosion-data",
            self,
            create=scripts.directory_create(render.CORROSION_DIR),
            delete=scripts.directory_delete(render.CORROSION_DIR),
            depends_on=depends_on,
        )
        files = [
            cmd.file("corrosion-config", self, render.CORROSION_CONFIG, config_text, depends_on=depends_on),
            cmd.file("corrosion-schema", self, render.CORROSION_SCHEMA, schema_text, depends_on=depends_on),
            cmd.file("corrosion-unit", self, f"{SYSTEMD}/jiji-corrosion.service", unit_text, depends_on=depends_on),
        ]
        # The bootstrap list matters only when a node starts, so a server joining or leaving
        # rewrites the others' config without restarting them.
        restart_on = _sha256(binary_sha, render.corrosion_config(settings, plan, []), schema_text, unit_text)
        # Corrosion is Type=simple and crash-loops when its API port is taken: the step waits
        # until the API answers.
        self.service = cmd.service(
            "corrosion-service",
            self,
            "jiji-corrosion",
            restart_on,
            [installed, data, *files],
            ready_check=scripts.corrosion_api_answers(f"127.0.0.1:{settings.api_port}"),
        )
        self.register_outputs({})


class Dns(pulumi.ComponentResource):
    """jiji-dns on the mesh address (which is also the container bridge's gateway)."""

    def __init__(
        self,
        cmd: _Commands,
        settings: MeshSettings,
        plan: ServerPlan,
        pyz: Artifact,
        depends_on: Sequence[pulumi.Resource],
        parent: pulumi.Resource,
    ) -> None:
        super().__init__("jiji:network:Dns", f"{cmd.server}-dns", None, pulumi.ResourceOptions(parent=parent))
        installed = cmd.install("jiji-dns", self, pyz, render.DNS_PYZ, depends_on)
        unit_text = render.dns_unit(settings, plan)
        unit = cmd.file("dns-unit", self, f"{SYSTEMD}/jiji-dns.service", unit_text, depends_on=depends_on)
        self.service = cmd.service(
            "dns-service", self, "jiji-dns", _sha256(pyz.sha256, unit_text), [installed, unit, *depends_on]
        )
        self.register_outputs({})


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
        self.cmd = _Commands(spec.name, connection)
        self.host = self.cmd.run(
            "host", self, create=scripts.preflight(settings.container_engine), delete=scripts.HOST_CLEANUP
        )
        self.key = self.cmd.run(
            "wg-key", self, create=scripts.WG_KEY_CREATE, delete=scripts.WG_KEY_DELETE, depends_on=[self.host]
        )
        self.public_key: pulumi.Output[str] = self.key.stdout.apply(lambda out: out.strip())

    def join(self, peers: list[Peer], others: list[ServerPlan], public_keys: dict[str, pulumi.Output[str]], registry: pulumi.Output[str]) -> None:
        cmd, settings, plan = self.cmd, self.settings, self.plan
        network = ContainerNetwork(cmd, settings, plan, depends_on=[self.host], parent=self)
        names = [p.name for p in peers]
        config = pulumi.Output.all(*[public_keys[n] for n in names]).apply(
            lambda keys: render.wireguard_config(settings, plan, peers, dict(zip(names, keys, strict=True)))
        )
        wireguard = WireGuard(cmd, config, depends_on=[self.key, network.service], parent=self)
        corrosion = Corrosion(
            cmd, settings, plan, others, self.uploads.corrosion, depends_on=[wireguard.interface], parent=self
        )
        tool = cmd.install("jiji-net", self, self.uploads.tool, render.TOOL_PATH, depends_on=[self.host])
        cmd.file("host-config", self, render.HOST_CONFIG, render.host_config(settings, plan), depends_on=[self.host])
        # Every server writes the same rows; any of them can remove a server that left.
        self.registry = cmd.run(
            "registry",
            self,
            create=f"{render.TOOL_PATH} register\n",
            stdin=registry,
            depends_on=[corrosion.service, tool],
        )
        self.dns = Dns(cmd, settings, plan, self.uploads.dns, depends_on=[corrosion.service], parent=self)
        self.register_outputs({"public_key": self.public_key})


class Mesh(pulumi.ComponentResource):
    def __init__(
        self,
        name: str,
        settings: MeshSettings,
        specs: list[ServerSpec],
        plans: dict[str, ServerPlan],
        ssh_key: pulumi.Input[str],
        uploads: Uploads,
    ) -> None:
        super().__init__("jiji:network:Mesh", name, None)
        specs = sorted(specs, key=lambda s: s.index)
        self.servers = {s.name: Server(s, plans[s.name], settings, ssh_key, uploads, parent=self) for s in specs}
        public_keys = {n: srv.public_key for n, srv in self.servers.items()}
        registry = _registry_rows(settings, specs, plans, public_keys)
        for s in specs:
            others = [plans[o.name] for o in specs if o.name != s.name]
            peers = peers_of(s, specs, plans, settings.wireguard_port)
            self.servers[s.name].join(peers, others, public_keys, registry)
        self.outputs: dict[str, Any] = {
            "cluster_cidr": settings.cluster_cidr,
            "domain": settings.domain,
            "servers": {s.name: _server_output(settings, s, plans[s.name], public_keys[s.name]) for s in specs},
        }
        self.register_outputs(self.outputs)


def _server_output(settings: MeshSettings, spec: ServerSpec, plan: ServerPlan, public_key: pulumi.Output[str]) -> dict[str, Any]:
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
    settings: MeshSettings, specs: list[ServerSpec], plans: dict[str, ServerPlan], public_keys: dict[str, pulumi.Output[str]]
) -> pulumi.Output[str]:
    names = [s.name for s in specs]

    def rows(keys: list[str]) -> str:
        servers = [
            {
                "id": s.name,
                "hostname": s.host,
                "subnet": plans[s.name].subnet,
                "wireguard_ip": plans[s.name].mesh_address,
                "wireguard_pubkey": key,
                "endpoints": [e for e in (s.endpoint, s.private_address) if e],
            }
            for s, key in zip(specs, keys, strict=True)
        ]
        metadata = {
            "cluster_cidr": settings.cluster_cidr,
            "subnet_prefix_len": settings.subnet_prefix_len,
            "domain": settings.domain,
        }
        return json.dumps({"servers": servers, "metadata": metadata}, indent=1, sort_keys=True) + "\n"

    return pulumi.Output.all(*[public_keys[n] for n in names]).apply(rows)
