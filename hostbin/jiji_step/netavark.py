"""Podman's network file (netavark's JSON), for a podman too old to name the bridge itself."""

from __future__ import annotations

import json
from pathlib import Path

from jiji_common.files import replace_file

from .errors import StepError


def name_interface(path: Path, bridge: str) -> None:
    """The network in PATH uses the bridge named BRIDGE. Only for a network nothing has used yet:
    netavark makes the bridge under this name on first use."""
    try:
        network = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StepError(
            f"{path} cannot be read as podman's network file ({e}); this podman keeps networks elsewhere"
        ) from e
    if not isinstance(network, dict):
        raise StepError(f"{path} is not a podman network file (it holds {type(network).__name__})")
    network["network_interface"] = bridge
    replace_file(path, json.dumps(network, indent=5))
