"""The in-memory service table: healthy container rows in, pre-encoded DNS answers out.

Pure data structure, no I/O. Each DNS name (a service name `{project}-{service}` or an
instance name `{project}-{service}-{instance}`) groups its containers by server; per server only
the newest container (largest `started_at`) is answered. A change touches only the names of the
rows it changes, and within them only the server groups involved, so applying one change costs
O(servers of that name), never a rebuild of the whole table.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import wire

# Columns the subscription must deliver; read by name, so their order in the SQL is free.
COLUMNS = ("id", "service", "server_id", "ip", "started_at", "instance_id", "project")


@dataclass(frozen=True, slots=True)
class Container:
    id: str
    project: str
    service: str
    server_id: str
    ip: str
    started_at: Any
    instance_id: str


def row_to_container(columns: Mapping[str, int], values: list[Any]) -> Container:
    """Build a Container from one subscription row, reading cells by column name."""

    def text(name: str) -> str:
        value = values[columns[name]]
        return "" if value is None else str(value)

    return Container(
        id=text("id"),
        project=text("project"),
        service=text("service"),
        server_id=text("server_id"),
        ip=text("ip"),
        started_at=values[columns["started_at"]],
        instance_id=text("instance_id"),
    )


def started_order(value: Any) -> tuple[int, float, str]:
    """Sort key for started_at: numbers (Unix ms) compare as numbers, text (ISO 8601) as text."""
    if isinstance(value, (int, float)):
        return (1, float(value), "")
    if value is None:
        return (0, 0.0, "")
    text = str(value)
    try:
        return (1, float(text), "")
    except ValueError:
        return (2, 0.0, text)


def label_for(*parts: str) -> str | None:
    """One DNS label joined from parts with '-', or None when it cannot be a label."""
    label = "-".join(parts).lower()
    if not label or len(label) > 63 or not label.isascii() or "." in label:
        return None
    return label


class _Name:
    """One DNS name: its containers grouped by server, and the winners answered."""

    __slots__ = ("by_server", "winners")

    def __init__(self) -> None:
        self.by_server: dict[str, dict[str, Container]] = {}
        self.winners: dict[str, Container] = {}

    def add(self, c: Container) -> None:
        self.by_server.setdefault(c.server_id, {})[c.id] = c
        self._elect(c.server_id)

    def remove(self, c: Container) -> None:
        group = self.by_server.get(c.server_id)
        if group is None or group.pop(c.id, None) is None:
            return
        if not group:
            del self.by_server[c.server_id]
        self._elect(c.server_id)

    def _elect(self, server_id: str) -> None:
        group = self.by_server.get(server_id)
        if not group:
            self.winners.pop(server_id, None)
            return
        # Ties on started_at go to the larger id so every node elects the same container.
        self.winners[server_id] = max(group.values(), key=lambda c: (started_order(c.started_at), c.id))


class ServiceTable:
    """Healthy containers and the answers derived from them for one domain."""

    def __init__(self, domain: str, ttl: int) -> None:
        self.domain = domain.strip(".").lower()
        self.domain_wire = wire.encode_name(self.domain)
        self.ttl = ttl
        self.containers: dict[str, Container] = {}
        self._names: dict[bytes, _Name] = {}
        # Question key (lower-cased qname + qtype + qclass) -> (section counts without EDNS,
        # section counts with EDNS, answer records): everything a reply needs, pre-encoded.
        self.answers: dict[bytes, tuple[bytes, bytes, bytes]] = {}
        # Lower-cased wire names that exist (for NOERROR/no-data on other types).
        self.existing: set[bytes] = {self.domain_wire}

    # ---- changes -------------------------------------------------------------------------
    def upsert(self, c: Container) -> None:
        old = self.containers.get(c.id)
        if old == c:
            return
        touched: set[bytes] = set()
        if old is not None:
            for name in self._names_of(old):
                entry = self._names.get(name)
                if entry is not None:
                    entry.remove(old)
                    touched.add(name)
        self.containers[c.id] = c
        for name in self._names_of(c):
            self._names.setdefault(name, _Name()).add(c)
            touched.add(name)
        for name in touched:
            self._render(name)

    def delete(self, container_id: str) -> None:
        old = self.containers.pop(container_id, None)
        if old is None:
            return
        for name in self._names_of(old):
            entry = self._names.get(name)
            if entry is not None:
                entry.remove(old)
                self._render(name)

    def load(self, rows: Iterable[Container]) -> None:
        """Bulk load (a snapshot): index everything, then render each name once."""
        for c in rows:
            self.containers[c.id] = c
        for c in self.containers.values():
            for name in self._names_of(c):
                entry = self._names.get(name)
                if entry is None:
                    entry = self._names[name] = _Name()
                entry.by_server.setdefault(c.server_id, {})[c.id] = c
        for name, entry in self._names.items():
            for server_id in entry.by_server:
                entry._elect(server_id)
            self._render(name)

    # ---- derived answers -------------------------------------------------------------------
    def _names_of(self, c: Container) -> list[bytes]:
        names = []
        service = label_for(c.project, c.service)
        if service is not None:
            names.append(bytes([len(service)]) + service.encode() + self.domain_wire)
            if c.instance_id:
                instance = label_for(c.project, c.service, c.instance_id)
                if instance is not None:
                    names.append(bytes([len(instance)]) + instance.encode() + self.domain_wire)
        return names

    def _render(self, name: bytes) -> None:
        entry = self._names.get(name)
        keys = [wire.question_key(name, t) for t in (wire.QTYPE_A, wire.QTYPE_AAAA, wire.QTYPE_ANY)]
        for key in keys:
            self.answers.pop(key, None)
        if entry is None or not entry.winners:
            self._names.pop(name, None)
            self.existing.discard(name)
            return
        self.existing.add(name)
        v4: list[bytes] = []
        v6: list[bytes] = []
        for server_id in sorted(entry.winners):
            ip = entry.winners[server_id].ip
            try:
                v4.append(wire.a_record(socket.inet_pton(socket.AF_INET, ip), self.ttl))
            except OSError:
                try:
                    v6.append(wire.aaaa_record(socket.inet_pton(socket.AF_INET6, ip), self.ttl))
                except OSError:
                    continue  # not an address: nothing to answer for this row
        for key, records in ((keys[0], v4), (keys[1], v6), (keys[2], v4 + v6)):
            if records:
                self.answers[key] = (
                    wire.counts(1, len(records), 0, 0),
                    wire.counts(1, len(records), 0, 1),
                    b"".join(records),
                )

    def names(self) -> dict[str, list[str]]:
        """Every answered name with its addresses (for operators and tests)."""
        out = {}
        for wire_name, entry in self._names.items():
            labels = []
            i = 0
            while wire_name[i]:
                labels.append(wire_name[i + 1 : i + 1 + wire_name[i]].decode())
                i += 1 + wire_name[i]
            out[".".join(labels)] = [entry.winners[s].ip for s in sorted(entry.winners)]
        return out
