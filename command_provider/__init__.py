"""jiji-net's own implementation of the remote resources of the `command` provider (1.2.1), for
machines without the official plugin. See server.py."""
