"""`jiji-net rejoin` (run by jiji-rejoin.service): brings this server's Corrosion node back into
the cluster when a partition has healed and Corrosion would not notice for minutes.

Why it is needed: Corrosion's membership (SWIM, the foca crate, with its WAN settings fixed in
Corrosion) declares a member down after about 20 s without answers. A down member is never
probed again; the only messages that cross to it are an announce to down members every 125 s
and the node's own announces to its bootstrap peers, every 2 to 5 minutes once it has run a
while. So a server cut off for a minute stays outside the cluster, serving its old rows, for up
to two minutes after the cable is back. A restarted node announces itself at once with a new
identity and is a member again within seconds (the reboot fault test), so that is the remedy.

When: only when this node is on the smaller side of what WireGuard can reach. The peers that
answer an echo over jiji0 but are not Corrosion members must outnumber the peers that are
members, for two checks in a row; and never within SETTLE s of Corrosion's start (it is still
announcing) or within COOLDOWN s of our last restart. A partition of two equal halves restarts
both halves' nodes, which is harmless; the larger side of any other split restarts nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from . import probe, sources
from .members import parse_members
from .wg import parse_dump

INTERVAL = 1.0  # seconds between checks: two wg/corrosion commands, no packet unless someone is missing
SETTLE = 30.0  # a node started this recently is still announcing itself
COOLDOWN = 60.0  # at most one restart per this many seconds
CHECKS_IN_A_ROW = 2


def outside(members: Iterable[str], peers: Iterable[str], answering: Iterable[str]) -> set[str]:
    """The peers (mesh addresses) that answer over jiji0 yet are not Corrosion members, when they
    outnumber the peers that are members; otherwise nothing. `members` are gossip addresses
    (`ip:port`) as `corrosion cluster members` prints them."""
    member_ips = ips_of(members)
    peer_set = set(peers)
    missing = (peer_set - member_ips) & set(answering)
    return missing if len(missing) > len(peer_set & member_ips) else set()


def ips_of(members: Iterable[str]) -> set[str]:
    """The IPs of gossip addresses (`ip:port`)."""
    return {m.rpartition(":")[0] for m in members}


@dataclass
class Watch:
    """The decision over time: `check` is called every INTERVAL with what was seen then."""

    settle: float = SETTLE
    cooldown: float = COOLDOWN
    in_a_row: int = CHECKS_IN_A_ROW
    _seen: int = field(default=0, init=False)
    _last_restart: float | None = field(default=None, init=False)

    def check(self, now: float, corrosion_up_since: float | None, missing: set[str]) -> bool:
        """True when Corrosion should be restarted now."""
        if corrosion_up_since is None or now - corrosion_up_since < self.settle or not missing:
            self._seen = 0
            return False
        if self._last_restart is not None and now - self._last_restart < self.cooldown:
            return False
        self._seen += 1
        if self._seen < self.in_a_row:
            return False
        self._seen = 0
        self._last_restart = now
        return True


def corrosion_up_since() -> float | None:
    """CLOCK_MONOTONIC seconds at which jiji-corrosion became active, None when it is not."""
    code, out = sources.run(
        ["systemctl", "show", "--property=ActiveState,ActiveEnterTimestampMonotonic", "jiji-corrosion"]
    )
    if code != 0:
        return None
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    if props.get("ActiveState") != "active":
        return None
    try:
        return int(props.get("ActiveEnterTimestampMonotonic", "0")) / 1e6
    except ValueError:
        return None


def look() -> set[str]:
    """What this server sees now: the answering peers that are not Corrosion members, when they
    outnumber those that are (see `outside`)."""
    code, dump = sources.wg_dump()
    if code != 0:
        return set()
    peers = {a for p in parse_dump(dump).peers if (a := probe.mesh_address(p.allowed_ips))}
    code, text = sources.corrosion_members()
    if code != 0 or not peers:
        return set()
    members = [m.addr for m in parse_members(text)]
    if not outside(members, peers, peers):
        return set()  # everyone is a member, or the members are the majority even if all answer
    answered = probe.answering(peers - ips_of(members)) or set()
    return outside(members, peers, answered)


def run(
    interval: float = INTERVAL,
    watch: Watch | None = None,
    clock: Callable[[], float] = time.monotonic,
    rounds: int | None = None,
) -> int:
    watch = watch or Watch()
    n = 0
    while rounds is None or n < rounds:
        n += 1
        started = clock()
        missing = look()
        if watch.check(clock(), corrosion_up_since() if missing else None, missing):
            print(
                f"jiji-net rejoin: {', '.join(sorted(missing))} answer over jiji0 but are not Corrosion members:"
                " restarting jiji-corrosion so that it announces itself again",
                file=sys.stderr,
                flush=True,
            )
            subprocess.run(["systemctl", "restart", "jiji-corrosion"], check=False, timeout=60)
        time.sleep(max(0.0, interval - (clock() - started)))
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval", type=float, default=INTERVAL, help="seconds between checks (default 1)")
