"""Deployments of the mesh program through the Automation API (see __main__.py)."""
