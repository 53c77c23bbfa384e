"""The registrar's pure core: which row a container should have, and the statements that make this
server's rows in Corrosion equal to that. Nothing here runs a command or talks to Corrosion.

Only `containers` rows with `server_id` = this server are ever written or deleted: every such
statement carries the server id in its WHERE clause, so even a container id that collided with
another server's row could not touch it. `services` rows are shared by every server running the
service: they are inserted when missing and never changed or deleted here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import astuple, dataclass

from jiji_common.names import label_for

from .corrosion import Statement
from .engine import INSTANCE_LABEL, PROJECT_LABEL, SERVICE_LABEL, Container

HEALTHY, UNHEALTHY, UNKNOWN = "healthy", "unhealthy", "unknown"


@dataclass(frozen=True)
class Row:
    """One `containers` row, columns as in hostbin/corrosion-schema.sql."""

    id: str
    service: str
    project: str
    server_id: str
    ip: str
    health_status: str
    started_at: int
    instance_id: str


COLUMNS = ("id", "service", "project", "server_id", "ip", "health_status", "started_at", "instance_id")
SELECT_OWN = f"SELECT {', '.join(COLUMNS)} FROM containers WHERE server_id = ?"
SELECT_SERVICES = "SELECT project, name FROM services"


@dataclass(frozen=True)
class Host:
    """What the decisions need to know about this server."""

    server: str
    subnet: str
    network: str


def health_of(c: Container) -> str:
    """healthy/unhealthy/unknown. No health check counts as healthy while running (the issue's
    rule); `starting` is unknown so DNS does not answer before the first passing check; a paused
    container answers no one, so it is unhealthy until unpaused."""
    if c.paused:
        return UNHEALTHY
    if c.health is None:
        return HEALTHY
    return {"healthy": HEALTHY, "unhealthy": UNHEALTHY}.get(c.health, UNKNOWN)


def desired_row(c: Container, host: Host) -> tuple[Row | None, str]:
    """The row this container should have (None: no row), and why, for the log."""
    project, service = c.labels.get(PROJECT_LABEL, ""), c.labels.get(SERVICE_LABEL, "")
    if not project or not service:
        return None, f"no {PROJECT_LABEL} and {SERVICE_LABEL} labels"
    if label_for(project, service) is None:
        return None, f"{project}-{service} is not a DNS label (ASCII, no dots, at most 63 characters)"
    if not c.running:
        return None, "not running"
    if host.network not in c.networks:
        return None, f"not attached to the {host.network} network"
    ip = c.networks[host.network]
    try:
        inside = ipaddress.ip_address(ip) in ipaddress.ip_network(host.subnet)
    except ValueError:
        inside = False
    if not inside:
        # Another server could not route to it: the mesh sends only this subnet here.
        return None, f"address {ip or '(none)'} on {host.network} is outside this server's subnet {host.subnet}"
    instance = c.labels.get(INSTANCE_LABEL) or host.server
    row = Row(c.id, service, project, host.server, ip, health_of(c), c.started_at_ms, instance)
    return row, "registered"


def row_from_db(values: list[object]) -> Row:
    v = dict(zip(COLUMNS, values, strict=True))
    started = v["started_at"]
    # Rows written by hand or by other tools may hold ISO 8601 text; compared, it differs, and
    # the registrar's own value (Unix ms) replaces it.
    return Row(
        id=str(v["id"]),
        service=str(v["service"]),
        project=str(v["project"]),
        server_id=str(v["server_id"]),
        ip=str(v["ip"]),
        health_status=str(v["health_status"]),
        started_at=int(started) if isinstance(started, int | float) else int(str(started)) if str(started).isdigit() else -1,
        instance_id=str(v["instance_id"]),
    )


_UPSERT = (
    f"INSERT INTO containers ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
    f" ON CONFLICT (id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS[1:])}"
    # Never take over another server's row; write only what differs (no new version to gossip).
    " WHERE containers.server_id = excluded.server_id AND ("
    + " OR ".join(f"containers.{c} IS NOT excluded.{c}" for c in COLUMNS[1:] if c != "server_id")
    + ")"
)
_SERVICE = "INSERT INTO services (project, name) VALUES (?, ?) ON CONFLICT (project, name) DO NOTHING"
_DELETE = "DELETE FROM containers WHERE id = ? AND server_id = ?"


def upsert(row: Row) -> list[Statement]:
    """The service's row first: jiji-dns joins containers to services, and both land in one
    transaction, so no reader sees a container without its service."""
    return [(_SERVICE, [row.project, row.service]), (_UPSERT, list(astuple(row)))]


def delete(container_id: str, server: str) -> Statement:
    return (_DELETE, [container_id, server])


def changes(
    desired: dict[str, Row | None], current: dict[str, Row], server: str
) -> tuple[list[Statement], dict[str, Row]]:
    """Statements that move the listed containers from `current` to `desired` (None = no row),
    and the rows held afterwards. Containers not listed in `desired` are left alone."""
    statements: list[Statement] = []
    after = dict(current)
    for cid, row in desired.items():
        if row is None:
            if cid in after:
                statements.append(delete(cid, server))
                del after[cid]
        elif after.get(cid) != row:
            statements += upsert(row)
            after[cid] = row
    return statements, after


def reconcile(
    desired: dict[str, Row],
    undecided: set[str],
    current: dict[str, Row],
    services: set[tuple[str, str]],
    server: str,
) -> tuple[list[Statement], dict[str, Row]]:
    """Make this server's rows (`current`) equal to the engine's full list (`desired`).

    `undecided` are containers whose inspect output could not be read: their rows stay as they
    are. A missing services row is written even when the container's row is already right.
    """
    wanted: dict[str, Row | None] = dict(desired)
    for cid in current:
        if cid not in desired and cid not in undecided:
            wanted[cid] = None
    statements, after = changes(wanted, current, server)
    upserted = {(r.project, r.service) for r in desired.values() if current.get(r.id) != r}
    needed = {(r.project, r.service) for r in desired.values()} - services - upserted
    for project, service in sorted(needed):
        statements.append((_SERVICE, [project, service]))
    return statements, after
