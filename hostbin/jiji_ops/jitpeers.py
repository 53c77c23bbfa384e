"""The access peers `jiji-net jit` knows: read from the registry, and which of those in the kernel
must leave it (pure). Issue 21.

The registry's `access_peers` table is looked at every REFRESH s: a peer removed or added
anywhere is known here within that (expiry needs no look: the daemon compares the time). The look
is first a fingerprint of the table's change clock (cr-sqlite keeps one row per column of each
row, whose versions only grow, and a row for each delete): while it stays the same, nothing is
read; 10,000 peers cost about 100 ms to read and parse, the fingerprint a few. The table is read
whole when the fingerprint moves, when it cannot be taken, and at least every FULL_READ s.
A read that fails keeps the last good list: a Corrosion restart must not lock out a laptop that
was let in a minute ago, and it must not let in anyone new either (the list is only ever the
registry's).

What leaves the kernel: a peer of the access range whose key is no longer declared, or has
expired, at once; one with no handshake for the idle timeout (it stays declared and comes back
just in time). Server peers (allowed-ips outside the access range) are never touched.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import threading
import time
from collections.abc import Callable, Iterable

from jiji_common import allow as allow_entries
from jiji_common.logline import warn

from .admission import AccessPeer
from .wg import Peer

REFRESH = 1.0  # seconds between looks at the registry
FULL_READ = 60.0  # seconds: the table is read whole at least this often, fingerprint or not
QUERY = (
    "SELECT p.name, p.public_key, p.address, p.expires_at, coalesce(a.allow, '')"
    " FROM access_peers p LEFT JOIN access_allow a ON a.name = p.name"
)
FINGERPRINT = (
    "SELECT count(*), total(col_version), max(db_version) FROM (SELECT col_version, db_version FROM"
    " access_peers__crsql_clock UNION ALL SELECT col_version, db_version FROM access_allow__crsql_clock)"
)


def parse_rows(
    rows: Iterable[list[object]], access: ipaddress.IPv4Network | None = None
) -> tuple[dict[bytes, AccessPeer], list[str]]:
    """The declared peers by key, and a problem per row that is not usable (skipped, so one bad
    row locks out no one else). An address outside `access` is one: installed as allowed-ips, it
    would take a server's or a container's address away from it on this server."""
    peers: dict[bytes, AccessPeer] = {}
    problems = []
    for row in rows:
        try:
            name, key_text, address, expires, *rest = row
            key = base64.b64decode(str(key_text), validate=True)
            if len(key) != 32:
                raise ValueError("not a 32-byte key")
            if not isinstance(expires, int) or isinstance(expires, bool):
                raise ValueError(f"expires_at {expires!r} is not unix seconds")
            ip = ipaddress.IPv4Address(str(address))
            if access is not None and ip not in access:
                raise ValueError(f"address {ip} is outside the access range {access}")
            try:
                opened = allow_entries.parse(str(rest[0])) if rest else ()
            except ValueError as e:
                # Let in all the same, with nothing beyond DNS and ping: a broken allow closes, never opens.
                problems.append(f"{name}: allow {str(rest[0])[:100]!r}: {e}")
                opened = ()
            peers[key] = AccessPeer(key, str(ip), float(expires) if expires else None, allow=opened)
        except (ValueError, TypeError, binascii.Error) as e:
            problems.append(f"{row[0] if row else '?'}: {e}")
    return peers, problems


class RegistryPeers:
    """The declared peers, refreshed from the registry by a thread of its own; `lookup` never
    waits on the network."""

    def __init__(
        self,
        read: Callable[[], list[list[object]]],
        refresh: float = REFRESH,
        on_change: Callable[[], None] = lambda: None,
        access: ipaddress.IPv4Network | None = None,
        fingerprint: Callable[[], object] | None = None,
    ) -> None:
        self._read, self._refresh, self._on_change, self._access = read, refresh, on_change, access
        self._fingerprint, self._last_print, self._read_at = fingerprint, object(), float("-inf")
        self.peers: dict[bytes, AccessPeer] = {}
        self.loaded = threading.Event()
        self._failing = False
        self._stop = threading.Event()

    def lookup(self, key: bytes) -> AccessPeer | None:
        return self.peers.get(key)

    def refresh_once(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        mark: object = object()  # never equal: read
        if self._fingerprint is not None:
            try:
                mark = self._fingerprint()
            except Exception:  # noqa: BLE001 - no fingerprint: read the table, as without one
                mark = object()
            if mark == self._last_print and self.loaded.is_set() and now - self._read_at < FULL_READ:
                return
        try:
            rows = self._read()
        except Exception as e:  # noqa: BLE001 - any failure of the read keeps the last list
            if not self._failing:
                warn("jit-registry-unreadable", error=e, keeping=len(self.peers))
            self._failing = True
            return
        peers, problems = parse_rows(rows, self._access)
        for problem in problems:
            warn("jit-registry-row-skipped", row=problem)
        before, self.peers = self.peers, peers  # one assignment: lookups see the old dict or the new one
        self._last_print, self._read_at = mark, now
        self._failing = False
        self.loaded.set()
        if peers != before:
            self._on_change()

    def run(self) -> None:
        while not self._stop.is_set():
            self.refresh_once()
            self._stop.wait(self._refresh)

    def stop(self) -> None:
        self._stop.set()


def leaving(
    kernel: Iterable[Peer],
    declared: dict[bytes, AccessPeer],
    access: ipaddress.IPv4Network,
    now: float,
    idle_timeout: float,
    activity: dict[str, tuple[int, float]],
) -> list[tuple[str, str]]:
    """(public key, reason) of each access peer in the kernel that must leave it: `undeclared`,
    `expired`, `moved` (its allowed-ips are not its declared address: another peer's install took
    it, or its address changed; it comes back just in time with the right one) or `idle`. Idle is
    nothing received for idle_timeout s: `activity` keeps, per key,
    the received-bytes counter and when it was last seen to move (updated here; a peer first seen
    counts from now, as after the daemon's own restart). A handshake counts too, but is not
    enough alone: a session carrying traffic re-handshakes only every 2 minutes."""
    out = []
    for peer in kernel:
        nets = [ipaddress.ip_network(a, strict=False) for a in peer.allowed_ips]
        try:
            known = declared.get(base64.b64decode(peer.public_key, validate=True))
        except (ValueError, binascii.Error):
            known = None
        if not nets:
            if known is not None:  # a declared access key left with no address: a server never is one
                out.append((peer.public_key, "moved"))
            continue
        if not all(n.version == 4 and n.subnet_of(access) for n in nets):  # type: ignore[arg-type]
            continue
        if known is None:
            out.append((peer.public_key, "undeclared"))
        elif peer.allowed_ips != (f"{known.address}/32",):
            out.append((peer.public_key, "moved"))
        elif known.expires_at is not None and known.expires_at <= now:
            out.append((peer.public_key, "expired"))
        else:
            seen = activity.get(peer.public_key)
            if seen is None or seen[0] != peer.rx_bytes:
                seen = activity[peer.public_key] = (peer.rx_bytes, now)
            if now - max(seen[1], peer.latest_handshake) >= idle_timeout:
                out.append((peer.public_key, "idle"))
    return out
