"""The stack's program as one function: read the stack's settings, plan the mesh, build the mesh,
export its outputs. `__main__.py` calls it for `pulumi up`; `deploy` runs it as an inline program
through the Automation API (no language host needed)."""

import pulumi

from . import artifacts, render
from . import settings as stack_settings
from .mesh import Mesh, Uploads
from .plan import plan_addresses


def mesh_program() -> None:
    settings, servers, ssh_key = stack_settings.load()
    plans = plan_addresses(settings, servers)
    dns_pyz, tool_pyz = artifacts.zipapps()
    uploads = Uploads.of(
        steplib=artifacts.built_file("steplib.sh", render.step_library()),
        dns=dns_pyz,
        tool=tool_pyz,
        corrosion=artifacts.local_binary(settings.corrosion.local_path) if settings.corrosion.local_path else None,
    )
    mesh = Mesh("jiji", settings, servers, plans, ssh_key, uploads)

    pulumi.export("cluster_cidr", mesh.outputs["cluster_cidr"])
    pulumi.export("domain", mesh.outputs["domain"])
    pulumi.export("servers", mesh.outputs["servers"])
    # Everything another stack needs in one value: `StackReference(...).get_output("mesh")`.
    pulumi.export("mesh", mesh.outputs)
