"""Pulumi's property values as the engine sends them in a protobuf Struct, and back.

A plain Struct carries the special values as objects with a signature key: secrets, assets,
archives; an unknown (a value not known until a deployment) is a fixed string. These helpers
read them without losing them: a secret input stays a secret output.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

SIG = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
ASSET_SIG = "c44067f5952c0a294b673a41bacd8c17"
ARCHIVE_SIG = "0def7320c3a5731c473e5ecbe6d01bc7"
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"


def to_python(struct: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(struct)


def to_struct(values: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


def secret(value: Any) -> dict[str, Any]:
    return {SIG: SECRET_SIG, "value": value}


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SIG) == SECRET_SIG


def reveal(value: Any) -> Any:
    """The value with every secret wrapper removed (for use, never for state)."""
    if is_secret(value):
        return reveal(value["value"])
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


def has_unknown(value: Any) -> bool:
    if value == UNKNOWN:
        return True
    if isinstance(value, dict):
        return any(has_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(has_unknown(v) for v in value)
    return False


def kind_of(value: Any) -> str | None:
    """"asset", "archive" or None."""
    if isinstance(value, dict):
        if value.get(SIG) == ASSET_SIG:
            return "asset"
        if value.get(SIG) == ARCHIVE_SIG:
            return "archive"
    return None


def comparable(value: Any) -> Any:
    """What decides whether a value changed: secrets by what they hold, assets and archives by
    their content hash (a moved file with the same bytes is no change)."""
    value = reveal(value)
    if kind_of(value):
        return (kind_of(value), value.get("hash") or value.get("path") or value.get("text") or value.get("uri"))
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
