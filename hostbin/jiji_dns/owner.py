"""The one owner of the served table: every change to it goes through `replace` or `apply`.

Three tasks write what the responder serves: the subscriber (a snapshot, then its changes), the
hints listener (rows it re-read) and the reconciler (the difference to a full re-read). They all
change it here, so the row cap, its counter and its log line, and the moment the table turns
ready are one rule, and a reader can tell by `snapshots` whether the table it started from was
replaced while it waited on Corrosion.
"""

from __future__ import annotations

from collections.abc import Iterable

from .events import Counters, log_limited
from .table import Container, ServiceTable

# One change: the container to serve under this id, or None to serve nothing under it.
Change = tuple[str, Container | None]


class TableOwner:
    """Holds the table the responder reads; `replace` swaps in a snapshot, `apply` edits in place."""

    def __init__(self, domain: str, ttl: int, counters: Counters, max_rows: int | None = None) -> None:
        self.table = ServiceTable(domain, ttl, max_rows)
        self.counters = counters
        # False until the first full snapshot: answers in the domain are SERVFAIL meanwhile.
        self.ready = False
        # How many snapshots replaced the table: a read that began before a replace is stale.
        self.snapshots = 0

    @property
    def max_rows(self) -> int:
        return self.table.max_rows

    def replace(self, rows: Iterable[Container]) -> None:
        """Serve exactly `rows` (a complete snapshot, later rows winning on an id), built aside
        and swapped in whole, so a reader never sees a half-loaded table."""
        fresh = ServiceTable(self.table.domain, self.table.ttl, self.table.max_rows)
        fresh.load(rows)
        self.table = fresh
        self.ready = True
        self.snapshots += 1

    def apply(self, changes: Iterable[Change]) -> None:
        """Change the served table row by row; a new row past the cap is refused, counted and
        logged (rate-limited) instead of grown."""
        table = self.table
        for container_id, c in changes:
            if c is None:
                table.delete(container_id)
            elif not table.upsert(c):
                self.counters.rows_refused += 1
                log_limited("row_cap", limit=table.max_rows, id=c.id[:64])
