"""Composition root for `pulumi up` with a full Pulumi install: the mesh program, as `deploy` runs it."""

from jiji_net.program import mesh_program

mesh_program()
