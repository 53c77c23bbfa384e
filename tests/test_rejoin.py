"""The rejoin watch's decisions (hostbin/jiji_ops/rejoin.py) on a fake clock and a fake network.

Each test drives `rejoin.step` once a second, as the unit does, with what a server would see: its
WireGuard peers, the IPs `corrosion cluster members` lists, and which peers answer an echo. The
timings follow from the watch's own constants and foca's: a member is declared down no sooner than
35 s after a probe fails (5 s probe period + 30 s suspicion), so a cut of 60 s is one after which
someone may be down, and one of 10 s (< LONG_SILENCE) is one after which no one is.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from jiji_ops import rejoin

P0, P1, P2, P3, P4 = (f"10.210.{i}.1" for i in range(5))
UP_SINCE = -1000.0  # Corrosion has run a long while


def drive(
    watch: rejoin.Watch,
    seconds: range,
    peers: set[str],
    members: Callable[[int], set[str] | None],
    reachable: Callable[[int], set[str]],
    up_since: Callable[[], float | None] = lambda: UP_SINCE,
    asked: list[tuple[int, set[str]]] | None = None,
) -> list[tuple[int, str]]:
    """Run one check per second; the restarts it asked for, as (second, reason)."""
    out = []
    for t in seconds:

        def answering(ask: set[str], t: int = t) -> set[str]:
            if asked is not None:
                asked.append((t, set(ask)))
            return ask & reachable(t)

        reason = rejoin.step(watch, float(t), peers, members(t), answering, up_since)
        if reason:
            out.append((t, reason))
    return out


def cut(start: int, end: int, lost: set[str], peers: set[str]) -> Callable[[int], set[str]]:
    """`lost` do not answer from `start` until `end` (exclusive); the others always do."""
    return lambda t: peers - lost if start <= t < end else set(peers)


def test_a_cut_off_server_that_still_lists_its_peers_restarts_once_right_after_the_heal() -> None:
    """The old failure: lab1 lists lab0 and lab2 as members all along (its foca stopped probing),
    so the member rule sees nothing; the echo history says it lost both for 60 s."""
    peers = {P0, P2}
    w = rejoin.Watch(me=P1)
    restarts = drive(w, range(0, 300), peers, lambda t: {P0, P2}, cut(100, 160, {P0, P2}, peers))
    assert [t for t, _ in restarts] == [161], restarts  # the second answer after the heal
    assert "smaller side (1 against 2)" in restarts[0][1]


def test_the_member_rule_alone_never_restarts_that_server() -> None:
    """What main's watch did with the same view: nothing (that is why the heal took minutes)."""
    peers = {P0, P2}
    w = rejoin.Watch(me=P1, long_silence=1e9)  # the cut rule off: only the member rule is left
    assert drive(w, range(0, 300), peers, lambda t: {P0, P2}, cut(100, 160, {P0, P2}, peers)) == []


def test_the_larger_side_never_restarts_whatever_its_view() -> None:
    peers = {P1, P2}
    # lab0 kept lab2, lost lab1 for 60 s; lab1 is not a member for a while after the heal, or is.
    for members in (lambda t: {P2} if 100 <= t < 200 else {P1, P2}, lambda t: {P1, P2}):
        w = rejoin.Watch(me=P0)
        assert drive(w, range(0, 300), peers, members, cut(100, 160, {P1}, peers)) == []


def test_an_even_split_restarts_only_the_side_without_the_lowest_address() -> None:
    everyone = {P0, P1, P2, P3}
    for me, lost, expect in ((P0, {P2, P3}, []), (P1, {P2, P3}, []), (P2, {P0, P1}, [161]), (P3, {P0, P1}, [161])):
        peers = everyone - {me}
        w = rejoin.Watch(me=me)
        restarts = drive(w, range(0, 300), peers, lambda t, peers=peers: peers, cut(100, 160, lost, peers))
        assert [t for t, _ in restarts] == expect, (me, restarts)
    # Without its own address a server cannot break the tie: both sides restart, as main's did.
    w = rejoin.Watch(me=None)
    peers = {P1, P2, P3}
    assert [t for t, _ in drive(w, range(0, 300), peers, lambda t: peers, cut(100, 160, {P2, P3}, peers))] == [161]


def test_the_side_that_stays_does_not_restart_while_the_other_side_rejoins() -> None:
    """An even split: lab0 stays, lab2 and lab3 restart and are not members of lab0 for a few seconds;
    2 answering non-members against 1 member is what the member rule acts on, so it waits SETTLE s.
    Were they still missing after that, it would act (a fallback, not the plan)."""
    peers = {P1, P2, P3}
    for missing_until, expect in ((170, []), (400, [192, 253])):  # then once per COOLDOWN
        w = rejoin.Watch(me=P0, settle=30)

        def members(t: int, until: int = missing_until) -> set[str]:
            return {P1} if 100 <= t < until else {P1, P2, P3}

        restarts = drive(w, range(0, 300), peers, members, cut(100, 160, {P2, P3}, peers))
        assert [t for t, _ in restarts] == expect, (missing_until, restarts)


def test_a_short_cut_restarts_nothing() -> None:
    """10 s of silence: shorter than any declaration of down, so every view is still right."""
    peers = {P0, P2}
    w = rejoin.Watch(me=P1)
    assert drive(w, range(0, 200), peers, lambda t: peers, cut(100, 110, {P0, P2}, peers)) == []


def test_a_peer_answering_once_in_a_flapping_link_is_not_a_heal() -> None:
    """One answer, then silence again (a one-way cut healing in steps): wait for two in a row."""
    peers = {P0, P2}

    def reachable(t: int) -> set[str]:
        if 100 <= t < 160 or 161 <= t < 170:
            return set()
        return set(peers)

    w = rejoin.Watch(me=P1)
    assert [t for t, _ in drive(w, range(0, 300), peers, lambda t: peers, reachable)] == [171]
    assert "after 70 s of silence" in drive(rejoin.Watch(me=P1), range(0, 300), peers, lambda t: peers, reachable)[0][1]


def test_servers_silent_since_long_before_the_cut_are_not_counted_as_a_side() -> None:
    """lab3 and lab4 were switched off long ago; lab0 loses lab1 for 60 s and keeps lab2: one
    against two, lab0 is on the larger side (with the dead counted it would think itself smaller)."""
    peers = {P1, P2, P3, P4}

    def reachable(t: int) -> set[str]:
        return {P2} if 100 <= t < 160 else {P1, P2}

    w = rejoin.Watch(me=P0)
    assert drive(w, range(0, 300), peers, lambda t: {P1, P2}, reachable) == []
    # Had they gone silent with lab1, they would be the other side: lab0 alone against three.
    w = rejoin.Watch(me=P0)

    def reachable2(t: int) -> set[str]:
        return {P2} if t >= 100 else set(peers)

    restarts = drive(
        w, range(0, 300), peers, lambda t: {P1, P2}, lambda t: reachable2(t) | ({P1} if t >= 160 else set())
    )
    assert [t for t, _ in restarts] == [161], restarts


def test_a_restart_happens_only_while_corrosion_runs_and_not_twice_within_the_gap() -> None:
    peers = {P0, P2}
    w = rejoin.Watch(me=P1)
    # Corrosion is down when the peers come back: nothing (systemd starts it, and a start announces).
    assert drive(w, range(0, 300), peers, lambda t: None, cut(100, 160, peers, peers), up_since=lambda: None) == []

    # A second cut right after the first heal: its silence is measured from the first echo it
    # missed (up to RECHECK s after it began), 166 -> 185 = 19 s >= LONG_SILENCE: a second restart,
    # 25 s after the first; not with a gap of 30 s.
    def reachable(t: int) -> set[str]:
        return set() if 100 <= t < 160 or 162 <= t < 185 else set(peers)

    w = rejoin.Watch(me=P1)
    assert [t for t, _ in drive(w, range(0, 300), peers, lambda t: peers, reachable)] == [161, 186]
    w = rejoin.Watch(me=P1, min_gap=30)
    assert [t for t, _ in drive(w, range(0, 300), peers, lambda t: peers, reachable)] == [161]


def test_echoes_go_to_each_answering_peer_every_recheck_seconds_and_to_silent_ones_every_check() -> None:
    peers = {P0, P2}
    asked: list[tuple[int, set[str]]] = []
    w = rejoin.Watch(me=P1)
    drive(w, range(0, 30), peers, lambda t: peers, cut(12, 100, {P2}, peers), asked=asked)
    assert [(t, sorted(a)) for t, a in asked] == [
        (0, [P0, P2]), (5, [P0, P2]), (10, [P0, P2]), (15, [P0, P2]), (16, [P2]), (17, [P2]), (18, [P2]), (19, [P2]),
        (20, [P0, P2]), (21, [P2]), (22, [P2]), (23, [P2]), (24, [P2]), (25, [P0, P2]), (26, [P2]), (27, [P2]),
        (28, [P2]), (29, [P2]),
    ]  # fmt: skip


def test_the_member_rule_waits_for_two_checks_a_settled_node_and_its_cooldown() -> None:
    """A node outside the cluster with no cut at all: answering non-members outnumber members."""
    peers = {P0, P2}
    started = {"at": 80.0}
    w = rejoin.Watch(me=P1, settle=30, cooldown=60, in_a_row=2)

    def check(t: int, members: set[str]) -> bool:
        return rejoin.step(w, float(t), peers, members, lambda ask: ask, lambda: started["at"]) is not None

    assert not check(100, set()) and not check(102, set())  # started 20 s ago: announcing
    assert not check(112, set())  # first sighting on a settled node
    assert not check(114, peers)  # healed by itself: the count starts over
    assert not check(116, set())
    assert check(118, set())  # two in a row: restart
    started["at"] = 118.0
    assert not any(check(t, set()) for t in range(120, 178, 2))  # settling, then the cooldown
    assert not check(180, set())  # first sighting after the cooldown
    assert check(182, set())
    # Corrosion not running: nothing.
    assert rejoin.step(rejoin.Watch(), 500.0, peers, set(), lambda ask: ask, lambda: None) is None


def test_without_a_raw_socket_nothing_is_learnt_and_nothing_restarted() -> None:
    w = rejoin.Watch(me=P1)
    assert rejoin.step(w, 0.0, {P0, P2}, set(), lambda ask: None, lambda: UP_SINCE) is None


def test_smaller_side() -> None:
    assert rejoin.smaller_side(P1, {P0, P2}, set())
    assert not rejoin.smaller_side(P0, {P1}, {P2})
    assert not rejoin.smaller_side(P0, {P2, P3}, {P1}) and rejoin.smaller_side(P2, {P0, P1}, {P3})
    assert rejoin.smaller_side(None, {P2, P3}, {P1})
    assert rejoin.smaller_side(P1, {P0}, set()) and not rejoin.smaller_side(P0, {P1}, set())


def test_a_restart_closes_the_gossip_endpoint_then_kills_then_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (Corrosion closes its QUIC endpoint: the peers reconnect), GRACE s, SIGKILL (not the
    5 s or more of a graceful leave), start."""
    calls: list[object] = []
    monkeypatch.setattr(rejoin.subprocess, "run", lambda argv, **kw: calls.append(argv))
    monkeypatch.setattr(rejoin.time, "sleep", lambda s: calls.append(s))
    rejoin.restart_corrosion()
    assert calls == [
        ["systemctl", "kill", "--signal=SIGTERM", "jiji-corrosion"],
        rejoin.GRACE,
        ["systemctl", "kill", "--signal=SIGKILL", "jiji-corrosion"],
        ["systemctl", "restart", "jiji-corrosion"],
    ]
    assert 0 < rejoin.GRACE <= 2


def test_the_unit_loop_restarts_after_a_healed_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` wires the sources to the watch: a fake clock, peers cut for 60 s, one restart."""
    clock = {"t": 0.0}
    restarts: list[float] = []
    monkeypatch.setattr(rejoin, "wg_peers", lambda: {P0, P2})
    monkeypatch.setattr(rejoin, "member_ips", lambda: {P0, P2})
    monkeypatch.setattr(rejoin.probe, "answering", lambda ask: set() if 100 <= clock["t"] < 160 else set(ask))
    monkeypatch.setattr(rejoin, "corrosion_up_since", lambda: UP_SINCE)
    monkeypatch.setattr(rejoin, "restart_corrosion", lambda: restarts.append(clock["t"]))

    def sleep(seconds: float) -> None:
        clock["t"] += 1.0

    monkeypatch.setattr(rejoin.time, "sleep", sleep)
    rejoin.run(watch=rejoin.Watch(me=P1), clock=lambda: clock["t"], rounds=300)
    assert restarts == [161.0]
