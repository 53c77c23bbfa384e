"""The engine's gRPC messages and stubs, from the Pulumi SDK's generated modules, loaded without
importing the `pulumi` package itself: the provider needs five generated files, and the SDK
(with every other protocol) would double the provider's memory (61 MB against 33 MB)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

_PACKAGE = "_jiji_pulumi_proto"


def _load(name: str) -> Any:
    if _PACKAGE not in sys.modules:
        spec = importlib.util.find_spec("pulumi")
        assert spec is not None and spec.submodule_search_locations, "the pulumi SDK is not installed"
        package = types.ModuleType(_PACKAGE)
        # The generated modules import each other relatively (`from . import plugin_pb2`).
        package.__path__ = [str(Path(spec.submodule_search_locations[0]) / "runtime" / "proto")]
        sys.modules[_PACKAGE] = package
    return importlib.import_module(f"{_PACKAGE}.{name}")


engine_pb2 = _load("engine_pb2")
engine_pb2_grpc = _load("engine_pb2_grpc")
plugin_pb2 = _load("plugin_pb2")
provider_pb2 = _load("provider_pb2")
provider_pb2_grpc = _load("provider_pb2_grpc")
