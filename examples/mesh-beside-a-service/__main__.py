"""An example program with the mesh as one component among its own resources.

The mesh's settings are read from the stack's `jiji-net:` keys, exactly as the jiji-net program
reads them (so `jiji-net:servers`, `jiji-net:ssh_private_key`, ... sit in this project's stack file
next to its own `jiji-net-example:` keys). Beside the mesh it puts one file on every server that
uses the mesh's outputs: the server's own mesh address and its neighbours', a line of its own
config, and the DNS server to use. `pulumi destroy` removes the file, then the mesh.

    python -m deploy up --stack dev --program examples/mesh-beside-a-service --dir DIR
"""

import json
import shlex

import pulumi
from pulumi_command import remote

from jiji_net import settings as mesh_settings
from jiji_net.mesh import Mesh, MeshArgs

NOTE = "/etc/jiji-example/neighbours.json"

settings, servers, ssh_key = mesh_settings.load()
mesh = Mesh("jiji", MeshArgs(settings=settings, servers=servers, ssh_private_key=ssh_key))
motd = pulumi.Config().get("motd") or "This server is part of a jiji-net mesh."


def note_of(name: str, outputs: dict) -> str:
    me = outputs[name]
    return json.dumps(
        {
            "motd": motd,
            "server": name,
            "mesh_address": me["mesh_address"],
            "dns": me["dns_address"],
            "neighbours": {n: o["mesh_address"] for n, o in sorted(outputs.items()) if n != name},
        },
        indent=1,
        sort_keys=True,
    )


for server in servers:
    if server.gone:
        continue
    text = pulumi.Output.from_input(mesh.servers).apply(lambda outputs, name=server.name: note_of(name, outputs))
    remote.Command(
        f"{server.name}-neighbours-note",
        connection=remote.ConnectionArgs(
            host=server.host, port=server.port, user=server.user, private_key=ssh_key, host_key=server.host_key
        ),
        create=text.apply(
            lambda t: f"mkdir -p {shlex.quote(NOTE.rsplit('/', 1)[0])} && printf '%s\\n' {shlex.quote(t)} > {NOTE}"
        ),
        delete=f"rm -f {NOTE} && rmdir --ignore-fail-on-non-empty {shlex.quote(NOTE.rsplit('/', 1)[0])}",
        add_previous_output_in_env=False,
        opts=pulumi.ResourceOptions(depends_on=[mesh]),
    )

pulumi.export("dns_servers", [o["dns_address"] for o in mesh.servers.values()])
pulumi.export("mesh", mesh.outputs)
