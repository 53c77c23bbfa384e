"""The in-memory service table: healthy container rows in, pre-encoded DNS answers out.

Pure data structure, no I/O. Each DNS name (a service name `{project}-{service}` or an
instance name `{project}-{service}-{instance}`) groups its containers by server; per server only
the newest container (largest `started_at`) is answered. A change touches only the names of the
rows it changes, and within them only the server groups involved, so applying one change costs
O(servers of that name), never a rebuild of the whole table.
"""

from __future__ import annotations

import itertools
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jiji_common.names import label_for, started_order

from . import wire

# Every change to any table takes a new number, so caches derived from a table (the
# responder's negative cache) can tell that they are stale, even across a table swap.
_GENERATIONS = itertools.count(1)

# The address plan holds 256 servers x 253 containers (64,768); four times that is room for
# IPv6 rows and rolling deploys while bounding a runaway (2.5 M rows cost 800 MB).
MAX_ROWS = 262_144

# Columns the subscription must deliver; read by name, so their order in the SQL is free.
COLUMNS = ("id", "service", "server_id", "ip", "started_at", "instance_id", "project")
# Container's field order, for reading rows positionally once the column map is known.
COLUMNS_ORDER = ("id", "project", "service", "server_id", "ip", "started_at", "instance_id")


@dataclass(frozen=True, slots=True)
class Container:
    id: str
    project: str
    service: str
    server_id: str
    ip: str
    started_at: Any
    instance_id: str


def row_reader(columns: Mapping[str, int]) -> Callable[[list[Any]], Container]:
    """A function turning one subscription row into a Container, reading cells by column name.

    Built once per `columns` event so each of a snapshot's rows costs one call. Project,
    service, server and instance repeat across rows: they are interned, so 64k rows share a few
    hundred strings instead of holding their own copies.
    """
    i_id, i_project, i_service, i_server, i_ip, i_started, i_instance = (columns[c] for c in COLUMNS_ORDER)
    intern = sys.intern

    def text(value: Any) -> str:
        return value if value.__class__ is str else ("" if value is None else str(value))

    def read(values: list[Any]) -> Container:
        return Container(
            text(values[i_id]),
            intern(text(values[i_project])),
            intern(text(values[i_service])),
            intern(text(values[i_server])),
            text(values[i_ip]),
            values[i_started],
            intern(text(values[i_instance])),
        )

    return read


# A server group of one name: the single container most groups hold, or several keyed by id
# (during a rolling deploy). Keeping singles unwrapped saves a dict per container at 64k rows.
Group = Container | dict[str, Container]


def _winner(group: Group) -> Container:
    if isinstance(group, Container):
        return group
    # Ties on started_at go to the larger id so every node elects the same container.
    return max(group.values(), key=lambda c: (started_order(c.started_at), c.id))


def _add(groups: dict[str, Group], c: Container) -> None:
    group = groups.get(c.server_id)
    if group is None or (isinstance(group, Container) and group.id == c.id):
        groups[c.server_id] = c
    elif isinstance(group, Container):
        groups[c.server_id] = {group.id: group, c.id: c}
    else:
        group[c.id] = c


def _remove(groups: dict[str, Group], c: Container) -> None:
    group = groups.get(c.server_id)
    if isinstance(group, Container):
        if group.id == c.id:
            del groups[c.server_id]
    elif group is not None and group.pop(c.id, None) is not None and len(group) == 1:
        groups[c.server_id] = next(iter(group.values()))


class ServiceTable:
    """Healthy containers and the answers derived from them for one domain."""

    def __init__(self, domain: str, ttl: int, max_rows: int | None = None) -> None:
        self.max_rows = MAX_ROWS if max_rows is None else max_rows
        self.domain = domain.strip(".").lower()
        self.domain_wire = wire.encode_name(self.domain)
        self.ttl = ttl
        self.containers: dict[str, Container] = {}
        # Wire name -> server id -> group of containers answering for that name on that server.
        self._names: dict[bytes, dict[str, Group]] = {}
        # Question key (lower-cased qname + qtype + qclass) -> (section counts without EDNS,
        # section counts with EDNS, answer records): everything a reply needs, pre-encoded.
        # ANY is answered from the A and AAAA entries (rare, so not stored).
        self.answers: dict[bytes, tuple[bytes, bytes, bytes]] = {}
        # Lower-cased wire names that exist (for NOERROR/no-data on other types).
        self.existing: set[bytes] = {self.domain_wire}
        self._label_cache: dict[tuple[str, ...], bytes | None] = {}
        self._counts: dict[int, tuple[bytes, bytes]] = {}
        self.generation = next(_GENERATIONS)

    # ---- changes -------------------------------------------------------------------------
    def upsert(self, c: Container) -> bool:
        """Insert or replace `c`; False (nothing changed) when it is new and the table is full."""
        old = self.containers.get(c.id)
        if old == c:
            return True
        if old is None and len(self.containers) >= self.max_rows:
            return False
        touched: set[bytes] = set()
        if old is not None:
            for name in self._names_of(old):
                groups = self._names.get(name)
                if groups is not None:
                    _remove(groups, old)
                    touched.add(name)
        self.containers[c.id] = c
        for name in self._names_of(c):
            _add(self._names.setdefault(name, {}), c)
            touched.add(name)
        for name in touched:
            self._render(name)
        return True

    def delete(self, container_id: str) -> None:
        old = self.containers.pop(container_id, None)
        if old is None:
            return
        for name in self._names_of(old):
            groups = self._names.get(name)
            if groups is not None:
                _remove(groups, old)
                self._render(name)

    def load(self, rows: Iterable[Container]) -> None:
        """Bulk load (a snapshot): index everything, then render each name once."""
        names = self._names
        for c in rows:
            self.containers[c.id] = c
        for c in self.containers.values():
            for name in self._names_of(c):
                groups = names.get(name)
                if groups is None:
                    names[name] = {c.server_id: c}
                else:
                    _add(groups, c)
        for name in list(names):
            self._render(name)

    # ---- derived answers -------------------------------------------------------------------
    def _names_of(self, c: Container) -> list[bytes]:
        service = self._wire_label((c.project, c.service))
        if service is None:
            return []
        if not c.instance_id:
            return [service]
        instance = self._wire_label((c.project, c.service, c.instance_id))
        return [service] if instance is None else [service, instance]

    def _wire_label(self, parts: tuple[str, ...]) -> bytes | None:
        cached = self._label_cache.get(parts, b"")
        if cached != b"":
            return cached
        label = label_for(*parts)
        wire_name = None if label is None else bytes([len(label)]) + label.encode() + self.domain_wire
        if len(self._label_cache) < 1_000_000:
            self._label_cache[parts] = wire_name
        return wire_name

    def _record(self, ip: str) -> tuple[int, bytes] | None:
        """(qtype, encoded record) for an address string; None when it is not an address."""
        try:
            return wire.QTYPE_A, wire.a_record(socket.inet_pton(socket.AF_INET, ip), self.ttl)
        except OSError:
            try:
                return wire.QTYPE_AAAA, wire.aaaa_record(socket.inet_pton(socket.AF_INET6, ip), self.ttl)
            except OSError:
                return None

    def _counts_for(self, n: int) -> tuple[bytes, bytes]:
        counts = self._counts.get(n)
        if counts is None:
            counts = self._counts[n] = (wire.counts(1, n, 0, 0), wire.counts(1, n, 0, 1))
        return counts

    def _render(self, name: bytes) -> None:
        self.generation = next(_GENERATIONS)
        groups = self._names.get(name)
        key_a = wire.question_key(name, wire.QTYPE_A)
        key_aaaa = wire.question_key(name, wire.QTYPE_AAAA)
        if not groups:
            self._names.pop(name, None)
            self.answers.pop(key_a, None)
            self.answers.pop(key_aaaa, None)
            self.existing.discard(name)
            return
        self.existing.add(name)
        v4: list[bytes] = []
        v6: list[bytes] = []
        for server_id in sorted(groups):
            record = self._record(_winner(groups[server_id]).ip)
            if record is not None:
                (v4 if record[0] == wire.QTYPE_A else v6).append(record[1])
        for key, records in ((key_a, v4), (key_aaaa, v6)):
            if records:
                plain, edns = self._counts_for(len(records))
                self.answers[key] = (plain, edns, b"".join(records))
            else:
                self.answers.pop(key, None)

    def names(self) -> dict[str, list[str]]:
        """Every answered name with its addresses (for operators and tests)."""
        out = {}
        for wire_name, groups in self._names.items():
            starts: list[int] = []
            wire.walk_name(wire_name, 0, starts)
            text = ".".join(wire_name[i + 1 : i + 1 + wire_name[i]].decode() for i in starts)
            out[text] = [_winner(groups[s]).ip for s in sorted(groups)]
        return out
