"""What a subscription or query row must look like before it may touch a table.

Corrosion's events are JSON from another process: a row of the wrong width, a cell of a huge
size or a change of an unknown kind is a broken stream, never a reason for an IndexError in the
middle of the subscriber. Shape errors raise BadEvent (the caller resyncs, with backoff); rows of
the right shape with unusable values are the data's problem: logged and treated as absent.
"""

from __future__ import annotations

import socket
from typing import Any

from .events import log_limited
from .table import COLUMNS, Container, row_reader

# Longest text cell kept (an id, a name part, an address); a DNS label is at most 63 anyway.
MAX_CELL = 255
MAX_COLUMNS = 64
CHANGE_KINDS = ("insert", "update", "delete")


class BadEvent(ValueError):
    """An event whose shape breaks the protocol: the subscription is started over."""


def valid_ip(text: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
            return True
        except OSError:
            pass
    return False


class RowReader:
    """Reads rows of one `columns` event into Containers, checking width and cell sizes."""

    def __init__(self, columns: Any) -> None:
        if not isinstance(columns, list) or len(columns) > MAX_COLUMNS or not all(isinstance(c, str) for c in columns):
            raise BadEvent(f"columns is not a list of names: {str(columns)[:200]}")
        index = {name: i for i, name in enumerate(columns)}
        missing = [c for c in COLUMNS if c not in index]
        if missing:
            raise BadEvent(f"subscription lacks columns {missing}")
        self.width = len(columns)
        self._read = row_reader(index)

    def row(self, body: Any) -> Container | None:
        """A `row` event's body, [rowid, values]: its container, or None when it is unusable."""
        if not isinstance(body, list) or len(body) != 2:
            raise BadEvent(f"row is not [rowid, values]: {str(body)[:200]}")
        return self.acceptable(self.values(body[1]))

    def values(self, values: Any) -> Container:
        if not isinstance(values, list) or len(values) != self.width:
            raise BadEvent(f"row has not {self.width} cells: {str(values)[:200]}")
        return self._read(values)

    @staticmethod
    def acceptable(c: Container) -> Container | None:
        """`c`, or None (logged) when a cell is too long to be real; a bad address is logged but
        kept: the name exists, it just has no record of that row (NOERROR, no data)."""
        if max(len(c.id), len(c.project), len(c.service), len(c.server_id), len(c.ip), len(c.instance_id)) > MAX_CELL:
            log_limited("row_refused", reason=f"a cell is longer than {MAX_CELL} characters", id=c.id[:64])
            return None
        if not valid_ip(c.ip):
            log_limited("bad_ip", id=c.id, ip=c.ip[:64])
        return c


def change(reader: RowReader | None, body: Any) -> tuple[str, str, Container | None, int | None]:
    """A `change` event's body, [kind, rowid, values, change_id?]: (kind, container id,
    container or None when unusable, change id or None)."""
    if reader is None:
        raise BadEvent("a change arrived before the subscription's columns")
    if not isinstance(body, list) or len(body) not in (3, 4) or body[0] not in CHANGE_KINDS:
        raise BadEvent(f"change is not [kind, rowid, values, change_id]: {str(body)[:200]}")
    change_id = body[3] if len(body) == 4 else None
    if change_id is not None and (not isinstance(change_id, int) or isinstance(change_id, bool)):
        raise BadEvent(f"change id is not a number: {str(change_id)[:50]}")
    c = reader.values(body[2])
    return body[0], c.id, reader.acceptable(c), change_id
