"""What docker and podman print, read into plain values (pure: no commands are run here).

The two engines differ in the shape of an event line and in small details of `inspect`; both are
normalised here so the registrar's decisions never look at an engine's JSON directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

ENGINES = ("docker", "podman")
PROJECT_LABEL = "jiji.project"
SERVICE_LABEL = "jiji.service"
INSTANCE_LABEL = "jiji.instance"

# Events after which a container's row may change. Everything else (exec_* of every health-check
# run on docker, attach, mount, ...) is noise that would only cost an inspect.
RELEVANT_ACTIONS = frozenset(
    {
        "start", "restart", "unpause", "pause", "health_status", "update", "rename",
        "kill", "die", "died", "oom", "stop", "cleanup", "remove", "destroy",
        "connect", "disconnect",
    }
)  # fmt: skip


class Malformed(ValueError):
    """An event line or inspect output that does not have the expected shape."""


def events_argv(engine: str) -> list[str]:
    fmt = "json" if engine == "podman" else "{{json .}}"
    return [engine, "events", "--format", fmt, "--filter", "type=container"]


def ps_argv(engine: str) -> list[str]:
    """Every container (running or not) that carries the service label; ids in full."""
    return [engine, "ps", "-a", "-q", "--no-trunc", "--filter", f"label={SERVICE_LABEL}"]


def inspect_argv(engine: str, ids: list[str]) -> list[str]:
    # `container inspect`, not `inspect`: an image or network with the same name is never answered.
    return [engine, "container", "inspect", *ids]


@dataclass(frozen=True)
class Event:
    container_id: str
    action: str
    labels: dict[str, str]

    @property
    def relevant(self) -> bool:
        return self.action in RELEVANT_ACTIONS


def parse_event(line: str) -> Event | None:
    """One line of `events`; None for events of other types. Raises Malformed.

    podman: {"ID", "Status", "Type", "Attributes": {labels, name, image}, ...}
    docker: {"Type", "Action": "health_status: healthy", "Actor": {"ID", "Attributes"}, ...}
    """
    try:
        raw = json.loads(line)
    except ValueError as e:
        raise Malformed(f"not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise Malformed("not a JSON object")
    kind = raw.get("Type", raw.get("type"))
    if kind != "container":
        return None
    actor = raw.get("Actor")
    if isinstance(actor, dict):
        cid, action, attributes = actor.get("ID"), raw.get("Action"), actor.get("Attributes")
    else:
        cid, action, attributes = raw.get("ID"), raw.get("Status"), raw.get("Attributes")
    if not isinstance(cid, str) or not cid or not isinstance(action, str) or not action:
        raise Malformed("container event without an id or an action")
    if attributes is None:
        attributes = {}
    if not isinstance(attributes, dict):
        raise Malformed("Attributes is not an object")
    # docker appends the new state ("health_status: healthy", "exec_start: sh -c ..."); the
    # registrar re-reads the state with inspect anyway, so only the verb matters.
    verb = action.split(":", 1)[0].strip()
    return Event(cid, verb, {str(k): str(v) for k, v in attributes.items()})


@dataclass(frozen=True)
class Container:
    """The parts of one `container inspect` object the registrar decides on."""

    id: str
    name: str
    labels: dict[str, str]
    running: bool
    paused: bool
    # None: no health check configured. Otherwise the engine's word: starting/healthy/unhealthy.
    health: str | None
    started_at_ms: int
    networks: dict[str, str]  # network name -> IPv4 address ("" while not running)


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Malformed(f"{what} is not an object")
    return value


def parse_time_ms(text: str) -> int:
    """RFC 3339 with up to nanoseconds (both engines), as Unix milliseconds; 0 for Go's zero time."""
    if text.startswith("0001-01-01"):
        return 0
    try:
        # fromisoformat keeps microseconds of a 9-digit fraction; offsets and "Z" both parse.
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Malformed(f"StartedAt {text!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _health(state: dict[str, Any]) -> str | None:
    # podman before 4.x wrote State.Healthcheck; docker and newer podman write State.Health.
    # podman prints the object with an empty Status when no check is configured.
    for key in ("Health", "Healthcheck"):
        status = _object(state.get(key), f"State.{key}").get("Status")
        if isinstance(status, str) and status:
            return status.lower()
    return None


def parse_container(raw: Any) -> Container:
    """One element of `container inspect`'s array. Raises Malformed."""
    obj = _object(raw, "inspect element")
    cid = obj.get("Id")
    if not isinstance(cid, str) or not cid:
        raise Malformed("inspect element without an Id")
    state = _object(obj.get("State"), "State")
    config = _object(obj.get("Config"), "Config")
    settings = _object(obj.get("NetworkSettings"), "NetworkSettings")
    networks = {}
    for name, net in _object(settings.get("Networks"), "NetworkSettings.Networks").items():
        address = _object(net, f"network {name}").get("IPAddress") or ""
        if not isinstance(address, str):
            raise Malformed(f"IPAddress on network {name} is not a string")
        networks[str(name)] = address
    started = state.get("StartedAt") or "0001-01-01T00:00:00Z"
    if not isinstance(started, str):
        raise Malformed("State.StartedAt is not a string")
    return Container(
        id=cid,
        name=str(obj.get("Name", "")).lstrip("/"),
        labels={str(k): str(v) for k, v in _object(config.get("Labels"), "Config.Labels").items()},
        running=state.get("Running") is True,
        paused=state.get("Paused") is True,
        health=_health(state),
        started_at_ms=parse_time_ms(started),
        networks=networks,
    )


@dataclass(frozen=True)
class Inspected:
    """What one `container inspect` run said: elements found, and whether its failure (if any)
    can only mean that containers are gone (versus an engine that did not answer)."""

    elements: list[Any]
    only_missing: bool
    error: str


def read_inspect(code: int, stdout: str, stderr: str) -> Inspected:
    """Both engines print the array of what they found and exit non-zero if any id is unknown;
    an unreachable daemon can print `[]` too, so the error text decides. Raises Malformed."""
    try:
        elements = json.loads(stdout) if stdout.strip() else []
    except ValueError as e:
        raise Malformed(f"inspect output is not JSON: {e}") from None
    if not isinstance(elements, list):
        raise Malformed("inspect output is not a JSON array")
    error = stderr.strip()
    lines = [line for line in error.lower().splitlines() if line.strip()]
    only_missing = code == 0 or (bool(lines) and all("no such" in line for line in lines))
    return Inspected(elements, only_missing, error)
