"""`jiji-net rejoin` (run by jiji-rejoin.service): brings this server's Corrosion node back into
the cluster when a partition has healed and Corrosion would not notice for minutes.

Why it is needed: Corrosion's membership (SWIM, the foca crate 0.19, with `Config::new_wan` fixed
in Corrosion) declares a member down once a probe fails and 30 s of suspicion pass. A down member
is never probed again; the only messages that cross to it are an announce to down members every
125 s and the node's own announces to its seeds (backoff 5 s doubling to 120 s after a start,
then every 300 s). What a node believes of its peers after a cut is not a reliable guide either:

  foca, on learning that it was declared down (a TurnUndead from a peer, or a "down" update about
  itself), or when Corrosion renews its identity 25-40 s after a start, changes identity, which
  resets it to "disconnected" (no probe, no periodic announce or gossip) until a message from
  some member reaches it. If that happens while the node is cut off (a one-way cut does it at
  once; a restart shortly before a cut does it later) the announcement of the new identity is
  lost, the node keeps listing its peers as members, probes nobody and declares nobody down,
  while they have it down and do not probe it. Each side waits for the other; the rows written
  on the cut-off side reach the others only when an announce happens to cross (up to minutes).

So the watch judges by what the network did, not by the member list: it remembers, from one echo
per peer over jiji0, which peers went silent and for how long. When peers that were silent for
LONG_SILENCE s or more answer again (two checks in a row), the cut is over, and whoever could have
been declared down may have been; the server on the smaller side of that cut (fewer peers kept
answering than went silent; on a tie, the side without the lowest mesh address) restarts its
Corrosion node, which announces itself at once to its seeds with a new identity (the seeds are
the first servers by index, so the side holding the lowest address is where those announces
land) and is a member everywhere again within seconds. One restart per healed cut, at any age of
the node. The larger side restarts nothing: the restarted node's announce also wakes a node of
the larger side that was left disconnected.

The member-list rule stays for what it sees that echoes cannot (a node outside the cluster with
no cut at all): when the peers that answer but are not Corrosion members outnumber the peers
that are, for two checks in a row, restart, but never within SETTLE s of Corrosion's start (it
is still announcing), within COOLDOWN s of the last restart, or within SETTLE s of a heal after
which this server's side stayed (the other side is restarting; until it has announced itself it
is not a member here, which on an even split would look like this node being outside).

Echoes: every peer at most every RECHECK s while it answers, every check while it is silent or
not a member; so a quiet mesh costs one echo per peer per RECHECK s.
"""

from __future__ import annotations

import argparse
import ipaddress
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from jiji_common import layout
from jiji_common.counters import CounterFile

from . import probe, sources
from .members import parse_members
from .wg import parse_dump

INTERVAL = 1.0  # seconds between checks
SETTLE = 30.0  # member rule: a node started this recently is still announcing itself
COOLDOWN = 60.0  # member rule: at most one restart per this many seconds
CHECKS_IN_A_ROW = 2
# A peer silent this long may have been declared down (or have declared us down): foca suspects a
# member one probe period (5 s) after an unanswered probe and declares it down 30 s later, so no
# one is down before 35 s; 15 s leaves room for the up to RECHECK s an echo round may miss.
LONG_SILENCE = 15.0
RECHECK = 5.0  # seconds between echoes to a peer that answers
MIN_GAP = 10.0  # cut rule: never two restarts closer than this
# How Corrosion is restarted. A graceful stop takes 5 s or more (it waits out a 5 s deadline to tell
# its members it leaves, then for sends stuck on dead connections), which alone would spend half of
# the 10 s a heal may take. A plain SIGKILL is worse: the peers keep their QUIC connections to the
# dead process (nothing closed them; the new process cannot reset them), and what they send on them
# is lost until the 30 s idle timeout: measured, a heal of 33 s. So: SIGTERM, which closes the
# gossip endpoint at once (the peers' connections end and they reconnect), GRACE s for those
# closes to go out, then SIGKILL and start. SQLite (WAL) and Corrosion's bookkeeping survive the
# kill; changes not yet broadcast reach the peers by their sync.
GRACE = 1.0


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


def smaller_side(me: str | None, went_silent: set[str], kept: set[str]) -> bool:
    """Whether this server was on the smaller side of a cut: `went_silent` are the peers it lost,
    `kept` those that answered throughout. A tie goes to the side holding the lowest address
    (that side stays); with no address of our own a tie counts as smaller (both sides act)."""
    mine = len(kept) + 1
    if len(went_silent) != mine:
        return len(went_silent) > mine
    if me is None:
        return True
    return min(map(_sort_key, went_silent)) < min(map(_sort_key, kept | {me}))


def _sort_key(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


@dataclass
class Watch:
    """The decision over time, pure: the driver asks `to_echo` whom to echo, reports the result to
    `observe`, then asks `check` (every INTERVAL) whether to restart Corrosion now."""

    me: str | None = None  # this server's mesh address (the tie-break of an even split)
    settle: float = SETTLE
    cooldown: float = COOLDOWN
    in_a_row: int = CHECKS_IN_A_ROW
    long_silence: float = LONG_SILENCE
    recheck: float = RECHECK
    min_gap: float = MIN_GAP
    _seen: int = field(default=0, init=False)
    _last_restart: float | None = field(default=None, init=False)
    _asked_at: dict[str, float] = field(default_factory=dict, init=False)
    _silent_since: dict[str, float] = field(default_factory=dict, init=False)
    _answers_in_a_row: dict[str, int] = field(default_factory=dict, init=False)
    _returned: dict[str, tuple[float, float]] = field(default_factory=dict, init=False)  # peer -> silence (from, to)
    _hold_until: float = field(default=-1e18, init=False)  # the member rule waits: the other side is restarting

    def to_echo(self, now: float, peers: set[str], member_ips: set[str] | None) -> set[str]:
        """Every silent or just returned peer, every non-member, and the others not echoed for
        `recheck` s."""
        non_members = peers - member_ips if member_ips is not None else set()
        return {
            p
            for p in peers
            if p in self._silent_since
            or p in self._returned
            or p in non_members
            or now - self._asked_at.get(p, -1e18) >= self.recheck
        }

    def observe(self, now: float, asked: set[str], answered: set[str]) -> None:
        for p in asked:
            self._asked_at[p] = now
            if p in answered:
                began = self._silent_since.pop(p, None)
                if began is not None and now - began >= self.long_silence:
                    self._returned[p] = (began, now)
                self._answers_in_a_row[p] = self._answers_in_a_row.get(p, 0) + 1
            else:
                back = self._returned.pop(p, None)
                # Silent again before a second answer: the same silence goes on.
                self._silent_since.setdefault(p, back[0] if back is not None else now)
                self._answers_in_a_row[p] = 0

    def forget_others(self, peers: set[str]) -> None:
        """Drop what is known of servers that are no longer peers."""
        for d in (self._asked_at, self._silent_since, self._answers_in_a_row, self._returned):
            for p in set(d) - peers:
                del d[p]

    def check(
        self, now: float, corrosion_up_since: Callable[[], float | None], peers: set[str], member_ips: set[str] | None
    ) -> str | None:
        """Why Corrosion should be restarted now, or None."""
        reason = self._after_a_cut(now, peers)
        if reason is None:
            if now < self._hold_until:
                self._seen = 0
                return None
            reason = self._outside(now, peers, member_ips)
            if reason is None:
                return None
            up = corrosion_up_since()
            if up is None or now - up < self.settle:
                self._seen = 0
                return None
            if self._last_restart is not None and now - self._last_restart < self.cooldown:
                return None
            self._seen += 1
            if self._seen < self.in_a_row:
                return None
        else:
            if corrosion_up_since() is None:
                return None  # not running: systemd starts it, and a start announces
            if self._last_restart is not None and now - self._last_restart < self.min_gap:
                return None
        self._seen = 0
        self._last_restart = now
        return reason

    def _after_a_cut(self, now: float, peers: set[str]) -> str | None:
        if not self._returned:
            return None
        if any(self._answers_in_a_row.get(p, 0) < self.in_a_row for p in self._returned):
            return None  # a returned peer has answered once only: wait for a second answer
        began = min(b for b, _ in self._returned.values())
        back = max(e for _, e in self._returned.values())
        still_silent = {
            p
            for p, s in self._silent_since.items()
            if p in peers and now - s >= self.long_silence and s >= began - self.long_silence
        }
        went_silent = set(self._returned) | still_silent
        kept = {p for p in peers - went_silent if p not in self._silent_since}
        returned = sorted(self._returned)
        self._returned.clear()
        if not smaller_side(self.me, went_silent, kept):
            # The other side restarts and announces itself within seconds; until then it is not a
            # member here, which the member rule would take for this node being outside (an even
            # split: 2 non-members against 1 member). It gets `settle` s before that rule looks again.
            self._hold_until = now + self.settle
            return None
        return (
            f"{', '.join(returned)} answer again after {back - began:.0f} s of silence and this server was on the"
            f" smaller side ({len(kept) + 1} against {len(went_silent)})"
        )

    def _outside(self, now: float, peers: set[str], member_ips: set[str] | None) -> str | None:
        if member_ips is None:
            self._seen = 0
            return None
        answering = {p for p in peers if p not in self._silent_since and self._asked_at.get(p) == now}
        missing = outside([f"{ip}:0" for ip in member_ips], peers, answering)
        if not missing:
            self._seen = 0
            return None
        return f"{', '.join(sorted(missing))} answer over jiji0 but are not Corrosion members"


def step(
    watch: Watch,
    now: float,
    peers: set[str],
    member_ips: set[str] | None,
    answering: Callable[[set[str]], set[str] | None],
    corrosion_up_since: Callable[[], float | None],
) -> str | None:
    """One check: echo whom the watch wants, tell it, and return why to restart (or None)."""
    watch.forget_others(peers)
    ask = watch.to_echo(now, peers, member_ips)
    if ask:
        answered = answering(ask)
        if answered is None:
            return None  # no raw socket (not root): nothing learnt
        watch.observe(now, ask, answered)
    return watch.check(now, corrosion_up_since, peers, member_ips)


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


def restart_corrosion(grace: float = GRACE) -> None:
    subprocess.run(["systemctl", "kill", "--signal=SIGTERM", "jiji-corrosion"], check=False, timeout=30)
    time.sleep(grace)
    subprocess.run(["systemctl", "kill", "--signal=SIGKILL", "jiji-corrosion"], check=False, timeout=30)
    subprocess.run(["systemctl", "restart", "jiji-corrosion"], check=False, timeout=60)


def wg_peers() -> set[str]:
    code, dump = sources.wg_dump()
    if code != 0:
        return set()
    return {a for p in parse_dump(dump).peers if (a := probe.mesh_address(p.allowed_ips))}


def member_ips() -> set[str] | None:
    code, text = sources.corrosion_members()
    if code != 0:
        return None
    return ips_of(m.addr for m in parse_members(text))


def own_address(path: str = sources.HOST_CONFIG) -> str | None:
    try:
        return sources.HostConfig.load(path).mesh_address
    except (SystemExit, OSError, KeyError, TypeError, ValueError):
        return None


def run(
    interval: float = INTERVAL,
    watch: Watch | None = None,
    clock: Callable[[], float] = time.monotonic,
    rounds: int | None = None,
) -> int:
    watch = watch or Watch(me=own_address())
    counters = CounterFile(layout.REJOIN_COUNTERS).start() if rounds is None else None
    n = 0
    while rounds is None or n < rounds:
        n += 1
        started = clock()
        peers = wg_peers()
        reason = step(watch, clock(), peers, member_ips() if peers else None, probe.answering, corrosion_up_since)
        if reason:
            print(
                f"jiji-net rejoin: {reason}: restarting jiji-corrosion so that it announces itself again",
                file=sys.stderr,
                flush=True,
            )
            restart_corrosion()
            if counters is not None:
                counters.add("restarts")
        time.sleep(max(0.0, interval - (clock() - started)))
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval", type=float, default=INTERVAL, help="seconds between checks (default 1)")
