"""The one place that reads Pulumi config: the stack's `jiji-net:` values, as text, handed to
validation.parse, which checks them and returns model values; the SSH key stays a secret Output."""

from __future__ import annotations

import pulumi
from pulumi.runtime import config as runtime_config

from .model import MeshSettings, Server
from .validation import parse

NAMESPACE = "jiji-net"


def stack_values() -> dict[str, str]:
    """Every key the stack sets in our namespace, without the namespace (the engine also passes
    Pulumi.yaml's defaults). Values as Pulumi holds them: text, JSON for lists and objects."""
    # pulumi.Config reads one key at a time and cannot list them; the SDK keeps the whole map in
    # pulumi.runtime.config (set by the language host, the Automation API's inline run, or mocks).
    # The SDK is pinned (pyproject.toml); tests/test_settings.py fails if this stops seeing keys.
    every = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    prefix = f"{NAMESPACE}:"
    # Keys may come as `jiji-net:key` or, from older SDK paths, `jiji-net:config:key`.
    return {
        key[len(prefix) :].removeprefix("config:"): value for key, value in every.items() if key.startswith(prefix)
    }


def load() -> tuple[MeshSettings, list[Server], pulumi.Output[str]]:
    """Settings, servers and the SSH key (kept a secret Output) of the current stack; ConfigError
    listing every problem before any resource exists."""
    values = stack_values()
    # The key's text is not parse's business: only whether it is set.
    settings, servers = parse({key: ("" if key == "ssh_private_key" else value) for key, value in values.items()})
    key = pulumi.Config(NAMESPACE).require_secret("ssh_private_key")
    return settings, servers, key
