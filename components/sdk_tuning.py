"""One change to how the Pulumi Python SDK registers resources: without its per-resource debug RPCs.

The SDK's registration code (`pulumi.runtime.resource`) sends the engine routine debug messages
for every resource ("registering resource: ty=..., name=...", "resource registration prepared",
"resource registration successful", and a component's "register resource outputs prepared"),
each a synchronous `Log` RPC on the event loop, which the engine then formats and writes to its
automatic log. In a preview of 64 servers (579 resources) they are about 2,500 RPCs and 6-18% of
the wall time (bench/program.py measures both ways in one run). They carry the resource's type,
name and URN (and a component's outputs), which the engine logs itself.

Only the registration module's reference to `pulumi.log` is replaced, by a view that drops those
routine messages and passes everything else through: any other debug message of that module (the
traceback of a failed registration, for one), warnings and errors, and `pulumi.log.debug` from
any other code, are untouched. `JIJI_SDK_DEBUG_LOG=1` keeps them all (for debugging the SDK).
"""

from __future__ import annotations

import os
import types
from collections.abc import Mapping
from typing import Any

ENV_KEEP = "JIJI_SDK_DEBUG_LOG"
# How the routine messages of pulumi 3.259's registration code begin; any other passes.
ROUTINE = (
    "registering resource: ",
    "resource registration prepared: ",
    "resource registration successful: ",
    "register resource outputs prepared: ",  # a component's outputs, once each
)


class _WithoutDebug:
    """A stand-in for the `pulumi.log` module: `debug` drops the routine messages, the rest is the
    module's."""

    def __init__(self, module: types.ModuleType) -> None:
        self._module = module

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        if not msg.startswith(ROUTINE):
            self._module.debug(msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def quiet_registration_debug(environ: Mapping[str, str] = os.environ) -> bool:
    """Drop the SDK's routine per-resource debug RPCs unless JIJI_SDK_DEBUG_LOG=1; True when dropped.
    A later SDK without that module attribute is left as it is."""
    if environ.get(ENV_KEEP) == "1":
        return False
    from pulumi.runtime import resource as registration

    current = getattr(registration, "log", None)
    if not isinstance(current, types.ModuleType):
        return isinstance(current, _WithoutDebug)
    registration.log = _WithoutDebug(current)  # type: ignore[assignment]
    return True
