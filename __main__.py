"""Composition root: read the stack's settings, plan the mesh, export what other stacks consume."""

import pulumi

from components import settings as stack_settings
from components.plan import plan_addresses

settings, servers, ssh_key = stack_settings.load()
plans = plan_addresses(settings, servers)

pulumi.export("cluster_cidr", settings.cluster_cidr)
pulumi.export("domain", settings.domain)
pulumi.export(
    "servers",
    {
        name: {
            "index": p.index,
            "subnet": p.subnet,
            "mesh_address": p.mesh_address,
            "container_range": p.container_range,
            "dns_address": p.mesh_address,
        }
        for name, p in plans.items()
    },
)
