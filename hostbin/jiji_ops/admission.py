"""Who a server lets in just in time (issue 21): the decision for one captured initiation, with
the costs bounded. Pure apart from the clock it is given; the daemon that captures (initiations.py),
opens (handshake.py), installs and hands back is built on it.

The order is the order of cost: the rate limits come before the two X25519 operations that opening
an initiation takes (anyone who knows a server's public key, which is not secret, can make
initiations that pass mac1), the lookup after it, the replay check last. A key's newest accepted
timestamp outlives the peer's time in the kernel: WireGuard forgets it when the peer leaves, and
without this memory a replay of an old initiation would be let in after garbage collection.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jiji_common.files import replace_file

from .cookies import CookieJar
from .handshake import Initiation, Refused
from .initiations import Knock


@dataclass(frozen=True)
class AccessPeer:
    public_key: bytes
    address: str  # its address in the access range: the peer's allowed-ips
    expires_at: float | None = None  # unix seconds; None: no expiry
    revoked: bool = False
    allow: tuple[tuple[str, int], ...] = ()  # ports of this server's mesh address beyond DNS and ping


@dataclass(frozen=True)
class Verdict:
    # "install", "cookie" (send a cookie reply), or why not: junk (mac1), rate-source,
    # rate-global, rate-verified, forged (opening failed), unknown, revoked, expired, replay
    reason: str
    peer: AccessPeer | None = None
    initiation: Initiation | None = None

    @property
    def install(self) -> bool:
        return self.reason == "install"


class TokenBucket:
    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.at = rate, burst, burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class ReplayMemory:
    """Each key's newest accepted TAI64N timestamp, kept in a file across the daemon's restarts."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.newest: dict[bytes, bytes] = {}
        if path is not None and path.exists():
            self.newest = {bytes.fromhex(k): bytes.fromhex(v) for k, v in json.loads(path.read_text()).items()}

    def accept(self, key: bytes, timestamp: bytes) -> bool:
        """True, and remembered, when `timestamp` is newer than any accepted for `key`."""
        if timestamp <= self.newest.get(key, b""):
            return False
        self.newest[key] = timestamp
        if self.path is not None:
            replace_file(self.path, json.dumps({k.hex(): v.hex() for k, v in self.newest.items()}))
        return True

    def forget(self, keys: set[bytes]) -> None:
        """Keys no longer declared (removed from the registry) need no memory."""
        for key in keys & self.newest.keys():
            del self.newest[key]


class Admission:
    """Decides about captured initiations. `open_initiation` is handshake.open_initiation bound
    to the server's key pair; `lookup` finds a declared access peer by public key."""

    def __init__(
        self,
        open_initiation: Callable[[bytes], Initiation],
        lookup: Callable[[bytes], AccessPeer | None],
        memory: ReplayMemory,
        *,
        mac1_problem: Callable[[bytes], str | None] = lambda message: None,
        cookies: CookieJar | None = None,
        # (rate per second, burst). Per source as WireGuard's own handshake limiter (20 a second,
        # 5 at once); overall, 50 openings a second (about 175 ms of CPU in pure Python). Under
        # load (the overall budget spent) an initiation with a valid mac2 (its source got a cookie,
        # so it is not forged) is opened from a budget of its own, 50 a second more; one without
        # gets a cookie reply, at most 1,000 a second (about 0.1 ms of CPU each).
        per_source: tuple[float, float] = (20.0, 5.0),
        overall: tuple[float, float] = (50.0, 100.0),
        verified: tuple[float, float] = (50.0, 50.0),
        cookie_replies: tuple[float, float] = (1000.0, 100.0),
        max_sources: int = 4096,
        now: float = 0.0,
    ) -> None:
        self.open, self.lookup, self.memory = open_initiation, lookup, memory
        self.mac1_problem, self.cookies = mac1_problem, cookies
        self.per_source, self.max_sources = per_source, max_sources
        self.sources: OrderedDict[str, TokenBucket] = OrderedDict()
        self.overall = TokenBucket(*overall, now)
        self.verified = TokenBucket(*verified, now)
        self.cookie_replies = TokenBucket(*cookie_replies, now)

    def _source_allows(self, source: str, now: float) -> bool:
        bucket = self.sources.pop(source, None) or TokenBucket(*self.per_source, now)
        self.sources[source] = bucket  # most recent last
        while len(self.sources) > self.max_sources:
            self.sources.popitem(last=False)
        return bucket.take(now)

    def decide(self, knock: Knock, now: float, wall: float) -> Verdict:
        """`now` is a monotonic clock for the limits, `wall` unix time for expiry and cookies."""
        if self.mac1_problem(knock.message) is not None:
            return Verdict("junk")  # one BLAKE2s: junk takes no token from anyone
        # As WireGuard: the per-source limit is for sources proven by mac2, under load. Before
        # that a source address is only a claim, and limiting by it would let anyone who knows a
        # laptop's address spend the laptop's tokens with forged initiations.
        if not self.overall.take(now):
            if self.cookies is None:
                return Verdict("rate-global")
            if self.cookies.mac2_ok(knock.message, knock.source, knock.source_port, now):
                if not self._source_allows(knock.source, now):
                    return Verdict("rate-source")
                if not self.verified.take(now):
                    return Verdict("rate-verified")
            elif self.cookie_replies.take(now):
                return Verdict("cookie")
            else:
                return Verdict("rate-global")
        try:
            initiation = self.open(knock.message)
        except Refused:
            return Verdict("forged")  # a right mac1 on content that does not open: it cost an X25519
        peer = self.lookup(initiation.static_public)
        if peer is None:
            return Verdict("unknown", initiation=initiation)
        if peer.revoked:
            return Verdict("revoked", peer, initiation)
        if peer.expires_at is not None and peer.expires_at <= wall:
            return Verdict("expired", peer, initiation)
        if not self.memory.accept(peer.public_key, initiation.timestamp):
            return Verdict("replay", peer, initiation)
        return Verdict("install", peer, initiation)
