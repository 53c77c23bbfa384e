"""The stack's program as one function: read the stack's settings, build the mesh, export its
outputs. `__main__.py` calls it for `pulumi up`; `deploy` runs it as an inline program through
the Automation API (no language host needed)."""

import pulumi

from . import settings as stack_settings
from .mesh import Mesh, MeshArgs


def mesh_program() -> None:
    settings, servers, ssh_key = stack_settings.load()
    mesh = Mesh("jiji", MeshArgs(settings=settings, servers=servers, ssh_private_key=ssh_key))
    pulumi.export("cluster_cidr", mesh.cluster_cidr)
    pulumi.export("domain", mesh.domain)
    pulumi.export("servers", mesh.servers)
    # Everything another stack needs in one value: `StackReference(...).get_output("mesh")`.
    pulumi.export("mesh", mesh.outputs)
