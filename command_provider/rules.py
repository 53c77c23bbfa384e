"""pulumi-command 1.2.1's rules for `command:remote:Command` and `command:remote:CopyToRemote`,
as pure functions over plain values (no gRPC, no SSH): what an input may be, and what a change
of inputs means.

- Only `triggers` forces a replacement; any other change is an update (the provider runs
  `update`, or `create` when there is none). Whether the old resource is deleted first is the
  engine's business (`delete_before_replace`), not the provider's.
- A connection gets 1.2.1's defaults: user root, port 22, 10 dial errors, 15 s per dial.
- Inputs this implementation does not support are refused here, with a sentence, rather than
  ignored: a proxy, passwords, an SSH agent, environment variables.
"""

from __future__ import annotations

import base64
from typing import Any

from . import wire

COMMAND = "command:remote:Command"
COPY = "command:remote:CopyToRemote"

CONNECTION_DEFAULTS = {"user": "root", "port": 22, "dialErrorLimit": 10, "perDialTimeout": 15}
_CONNECTION_KEYS = {"host", "port", "user", "privateKey", "hostKey", "dialErrorLimit", "perDialTimeout"}
_CONNECTION_REFUSED = {
    "password": "passwords are not supported; give privateKey",
    "privateKeyPassword": "encrypted private keys are not supported; give an unencrypted privateKey (kept as a secret)",
    "agentSocketPath": "an SSH agent is not supported; give privateKey",
    "proxy": "a proxy (bastion) connection is not supported; reach the host directly",
}
_INPUTS = {
    COMMAND: {"connection", "create", "update", "delete", "triggers", "stdin", "logging", "addPreviousOutputInEnv", "environment"},
    COPY: {"connection", "source", "remotePath", "triggers"},
}
OUTPUT_ONLY = {COMMAND: ("stdout", "stderr"), COPY: ()}
LOGGING = ("stdout", "stderr", "stdoutAndStderr", "none")
HOST_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
UNSUPPORTED = "is not supported by jiji-net's command provider"


def type_of(urn: str) -> str:
    """The resource's own type: the URN's type part lists its parents' types first, `$`-joined."""
    return urn.split("::")[2].rsplit("$", 1)[-1]


def name_of(urn: str) -> str:
    return urn.split("::")[-1]


def check(typ: str, news: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """(inputs with defaults, failures as (property, reason)). Unknown values pass (a preview)."""
    failures: list[tuple[str, str]] = []
    if typ not in _INPUTS:
        return news, [("", f"resource type {typ} {UNSUPPORTED}: only {COMMAND} and {COPY}")]
    inputs = dict(news)
    for key in sorted(set(news) - _INPUTS[typ]):
        failures.append((key, f"{key} is not an input of {typ}"))
    connection = news.get("connection")
    if connection is None:
        failures.append(("connection", "connection is required"))
    elif connection != wire.UNKNOWN:
        inputs["connection"], problems = _check_connection(connection)
        failures += problems
    if typ == COMMAND:
        failures += _check_command(news)
    else:
        failures += _check_copy(news)
    return inputs, failures


def _check_connection(connection: Any) -> tuple[Any, list[tuple[str, str]]]:
    plain = connection["value"] if wire.is_secret(connection) else connection
    if not isinstance(plain, dict):
        return connection, [("connection", "connection must be an object")]
    failures = []
    for key in sorted(set(plain) - _CONNECTION_KEYS):
        reason = _CONNECTION_REFUSED.get(key, "is not a connection setting")
        failures.append((f"connection.{key}", f"connection.{key} {UNSUPPORTED}: {reason}"))
    filled = {**CONNECTION_DEFAULTS, **plain}
    if "privateKey" in filled and not wire.is_secret(filled["privateKey"]) and filled["privateKey"] != wire.UNKNOWN:
        # A secret of its own too, as 1.2.1's Check marks it (the engine sends it bare inside the
        # secret connection): the state then reads the same whichever provider wrote it.
        filled["privateKey"] = wire.secret(filled["privateKey"])
    if "host" not in plain:
        failures.append(("connection.host", "connection.host is required"))
    if "privateKey" not in plain:
        failures.append(("connection.privateKey", "connection.privateKey is required: this provider authenticates with a key only"))
    host_key = wire.reveal(plain.get("hostKey"))
    if isinstance(host_key, str) and host_key != wire.UNKNOWN:
        problem = host_key_problem(host_key)
        if problem:
            failures.append(("connection.hostKey", problem))
    for key in ("port", "dialErrorLimit", "perDialTimeout"):
        value = wire.reveal(filled[key])
        if value != wire.UNKNOWN and (not isinstance(value, int | float) or int(value) != value):
            failures.append((f"connection.{key}", f"connection.{key} must be a whole number, not {value!r}"))
    # Secret as a whole, as 1.2.1's Check makes it: it holds the private key.
    return wire.secret(filled), failures


def host_key_problem(host_key: str) -> str | None:
    """A sentence when `host_key` is not one line `TYPE BASE64` of a known type, else None."""
    parts = host_key.split()
    if len(parts) < 2 or parts[0] not in HOST_KEY_TYPES:
        return f"connection.hostKey must read 'TYPE BASE64' with TYPE one of {', '.join(HOST_KEY_TYPES)}"
    try:
        base64.b64decode(parts[1], validate=True)
    except ValueError:
        return "connection.hostKey: the key after the type is not base64"
    return None


def _check_command(news: dict[str, Any]) -> list[tuple[str, str]]:
    failures = []
    environment = news.get("environment")
    if environment and environment != wire.UNKNOWN:
        failures.append(
            ("environment", f"environment {UNSUPPORTED} (sshd accepts only what AcceptEnv lists): put VAR=value in the command or pass values on stdin")
        )
    logging = news.get("logging")
    if logging is not None and logging != wire.UNKNOWN and logging not in LOGGING:
        failures.append(("logging", f"logging must be one of {', '.join(LOGGING)}, not {logging!r}"))
    for key in ("create", "update", "delete", "stdin"):
        value = wire.reveal(news.get(key))
        if value is not None and not isinstance(value, str):
            failures.append((key, f"{key} must be a string"))
    return failures


def _check_copy(news: dict[str, Any]) -> list[tuple[str, str]]:
    failures = []
    if not isinstance(news.get("remotePath"), str):
        failures.append(("remotePath", "remotePath is required, a path on the remote host"))
    source = wire.reveal(news.get("source"))
    if source is None:
        failures.append(("source", "source is required: a FileAsset, StringAsset or FileArchive"))
    elif source != wire.UNKNOWN:
        kind = wire.kind_of(source)
        if kind == "asset" and not (source.get("path") or "text" in source):
            failures.append(("source", "source must be a FileAsset or a StringAsset: remote assets are not supported"))
        elif kind == "archive" and not source.get("path"):
            failures.append(("source", "source must be a FileArchive of a local path: asset and remote archives are not supported"))
        elif kind is None:
            failures.append(("source", "source must be an asset or an archive"))
    return failures


def diff(
    typ: str, olds: dict[str, Any], news: dict[str, Any], ignore_changes: list[str]
) -> tuple[dict[str, str], list[str]]:
    """({input: "add" | "delete" | "update"}, [inputs that force a replacement]). `olds` are the
    stored outputs: the inputs they carry are compared, output-only values are not."""
    ignored = {path.split(".")[0].split("[")[0] for path in ignore_changes}
    changed: dict[str, str] = {}
    for key in sorted((set(olds) - set(OUTPUT_ONLY[typ])) | set(news)):
        if key in ignored or "*" in ignored:
            continue
        if key not in news:
            changed[key] = "delete"
        elif key not in olds:
            changed[key] = "add"
        elif wire.has_unknown(news[key]) or wire.comparable(olds[key]) != wire.comparable(news[key]):
            changed[key] = "update"
    return changed, [k for k in changed if k == "triggers"]


def outputs_after_run(inputs: dict[str, Any], stdout: str, stderr: str) -> dict[str, Any]:
    """A Command's outputs: its inputs, the connection kept secret (it holds the key), and what
    the command printed, one trailing newline off as 1.2.1 does."""
    out = copy_outputs(inputs)
    out["stdout"] = stdout.removesuffix("\n")
    out["stderr"] = stderr.removesuffix("\n")
    return out


def copy_outputs(inputs: dict[str, Any]) -> dict[str, Any]:
    out = dict(inputs)
    if "connection" in out and not wire.is_secret(out["connection"]):
        out["connection"] = wire.secret(out["connection"])
    return out


def needs_copy(olds: dict[str, Any], news: dict[str, Any]) -> bool:
    """1.2.1 copies again on update only when the source's content or the remote path changed."""
    old_source, new_source = wire.reveal(olds.get("source")), wire.reveal(news.get("source"))
    return wire.comparable(old_source) != wire.comparable(new_source) or olds.get("remotePath") != news.get("remotePath")
