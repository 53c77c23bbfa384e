"""One change to how the Pulumi Python SDK registers resources: without its per-resource debug RPCs.

The SDK's registration code (`pulumi.runtime.resource`) sends the engine four debug messages for
every resource ("preparing resource for RPC", "resource registration prepared", ...), each a
synchronous `Log` RPC on the event loop, which the engine then formats and writes to its automatic
log. In a preview of 64 servers (579 resources) they are 2,520 RPCs and about a fifth of the wall
time (bench/program.py measures both ways in one run). They carry nothing but the resource's
type and name, which the engine logs anyway.

Only the registration module's reference to `pulumi.log` is replaced, by a view that drops
`debug` and passes everything else through: warnings and errors, and `pulumi.log.debug` from any
other code, are untouched. `JIJI_SDK_DEBUG_LOG=1` keeps the messages (for debugging the SDK itself).
"""

from __future__ import annotations

import os
import types
from typing import Any

ENV_KEEP = "JIJI_SDK_DEBUG_LOG"


class _WithoutDebug:
    """A stand-in for the `pulumi.log` module: `debug` does nothing, the rest is the module's."""

    def __init__(self, module: types.ModuleType) -> None:
        self._module = module

    def debug(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def quiet_registration_debug(environ: os._Environ[str] | dict[str, str] = os.environ) -> bool:
    """Drop the SDK's per-resource debug RPCs unless JIJI_SDK_DEBUG_LOG=1; True when dropped.
    A later SDK without that module attribute is left as it is."""
    if environ.get(ENV_KEEP) == "1":
        return False
    from pulumi.runtime import resource as registration

    current = getattr(registration, "log", None)
    if not isinstance(current, types.ModuleType):
        return isinstance(current, _WithoutDebug)
    registration.log = _WithoutDebug(current)  # type: ignore[assignment]
    return True
