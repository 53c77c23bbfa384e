"""Composition root for `pulumi up` with a full Pulumi install: the mesh program, as `deploy` runs it."""

from components.program import mesh_program

mesh_program()
