"""`jiji-net jit`: access peers let into WireGuard just in time (issue 21). Captures initiations
to the interface's port (initiations.Watcher), decides about each (admission.Admission), and for a
declared key not in the kernel installs the peer with its access address as allowed-ips and hands
the captured initiation back, so WireGuard answers the client at once and records its timestamp.
Beside it, every REAP s, access peers that must leave the kernel (jitpeers.leaving) are removed.

The server's private key is read from its file; it is never on a command line or in a log. Peers
come from the registry (`--registry`, what servers run: jitpeers.RegistryPeers) or from a JSON
file (`--peers`, `[{"public_key": ..., "address": ..., "expires_at": ..., "revoked": ...}]`, read
again when it changes: the namespace tests, which have no Corrosion).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import ipaddress
import json
import subprocess
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from jiji_common import layout
from jiji_common.counters import CounterFile
from jiji_common.logline import log, warn

from . import handshake, initiations, jitpeers
from .accessrules import AccessRules, present_peers
from .admission import AccessPeer, Admission, ReplayMemory
from .cookies import CookieJar
from .corrosion import Corrosion
from .wg import parse_dump

# installs, refusals by reason, removals by reason: for `jiji-net metrics`.
COUNTERS = CounterFile(layout.JIT_COUNTERS)

REAP = 1.0  # seconds between looks at the kernel's access peers
# Seconds between two comparisons of JIJI-ACCESS with what is wanted when nothing changed (an
# install, a removal or a registry change compares at once).
RULES_CHECK = 60.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interface", default="jiji0")
    p.add_argument("--port", type=int, default=51820, help="the interface's listen port")
    p.add_argument("--key", type=Path, required=True, help="the interface's private key file")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--registry", help="the Corrosion API whose access_peers table declares the peers (host:port)")
    source.add_argument("--peers", type=Path, help="declared access peers (JSON), instead of the registry")
    p.add_argument("--state", type=Path, required=True, help="where each key's newest timestamp is kept")
    p.add_argument("--access-cidr", type=ipaddress.IPv4Network, help="the access range: its peers are reaped")
    p.add_argument("--idle-timeout", type=float, default=600.0, help="seconds without a handshake before a peer leaves the kernel")
    p.add_argument("--openings", type=float, default=50.0, help="initiations opened a second before cookie replies start")
    p.add_argument("--mesh-address", help="this server's mesh address: peers' allowed ports are opened on it (JIJI-ACCESS)")
    p.add_argument(
        "--closed-ports",
        default="",
        help="comma-separated ports never opened to an access peer, whatever its allow says (Corrosion's)",
    )


class DeclaredPeers:
    """The peers file, read again when its modification time changes; a file that does not parse
    keeps the last good list (and says so)."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen, self.peers = path, -1.0, dict[bytes, AccessPeer]()

    def lookup(self, key: bytes) -> AccessPeer | None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = 0.0
        if mtime != self.seen:
            self.seen = mtime
            try:
                entries = json.loads(self.path.read_text()) if mtime else []
                self.peers = {p.public_key: p for p in map(_peer, entries)}
            except (OSError, ValueError, KeyError, TypeError, binascii.Error) as e:
                warn("jit-peers-unreadable", path=self.path, error=e)
        return self.peers.get(key)


def _peer(entry: dict[str, object]) -> AccessPeer:
    key = base64.b64decode(str(entry["public_key"]), validate=True)
    if len(key) != 32:
        raise ValueError(f"public_key {entry['public_key']!r} is not a WireGuard key")
    expires = entry.get("expires_at")
    if expires is not None and not isinstance(expires, int | float):
        raise ValueError(f"expires_at {expires!r} is not unix seconds")
    address = str(ipaddress.IPv4Address(str(entry["address"])))
    return AccessPeer(key, address, expires, entry.get("revoked", False) is True)


def kernel_peers(interface: str) -> dict[bytes, set[str]]:
    """Each peer in the kernel, by key, with its allowed-ips."""
    out = subprocess.run(["wg", "show", interface, "allowed-ips"], capture_output=True, text=True, check=True, timeout=10)
    peers = {}
    for line in out.stdout.splitlines():
        key, *nets = line.split()
        peers[base64.b64decode(key)] = {n for n in nets if n != "(none)"}
    return peers


def install(interface: str, peer: AccessPeer) -> None:
    key = base64.b64encode(peer.public_key).decode()
    subprocess.run(["wg", "set", interface, "peer", key, "allowed-ips", f"{peer.address}/32"], check=True, timeout=10)


def remove(interface: str, key: str) -> None:
    subprocess.run(["wg", "set", interface, "peer", key, "remove"], check=True, timeout=10)


def reap_forever(
    args: argparse.Namespace,
    declared: Callable[[], dict[bytes, AccessPeer]],
    activity: dict[str, tuple[int, float]],
    changed: threading.Event,
    rules: AccessRules | None = None,
) -> None:
    """Removes the access peers that must leave the kernel, every REAP s and at once when the
    declared peers changed (a revocation is acted on as soon as it is read), for ever; and keeps
    their allowed ports (JIJI-ACCESS) equal to the peers still in."""
    checked = float("-inf")
    while True:
        was_changed = changed.is_set()
        changed.clear()
        try:
            dump = subprocess.run(["wg", "show", args.interface, "dump"], capture_output=True, text=True, timeout=10)
            if dump.returncode == 0:
                kernel = parse_dump(dump.stdout).peers
                now = time.time()
                gone = jitpeers.leaving(kernel, declared(), args.access_cidr, now, args.idle_timeout, activity)
                for key, reason in gone:
                    remove(args.interface, key)
                    activity.pop(key, None)
                    log("jit-removed", peer=key, reason=reason)
                    COUNTERS.add("removals", reason)
                if rules is not None and (gone or was_changed or time.monotonic() - checked >= RULES_CHECK):
                    checked = time.monotonic()  # a failing sync is tried again in RULES_CHECK, not every REAP
                    sync_rules(rules, args.interface, declared)
        except (subprocess.SubprocessError, OSError, ValueError) as e:
            warn("jit-reap-failed", error=e)
        changed.wait(REAP)


def sync_rules(rules: AccessRules, interface: str, declared: Callable[[], dict[bytes, AccessPeer]]) -> None:
    written = rules.sync(present_peers(kernel_peers(interface), declared()))
    if written is not None:
        log("jit-rules", chain="JIJI-ACCESS", rules=written)


class Refusals:
    """Refused initiations, logged one by one only while few: a flood of forged ones must not
    become a flood of log lines. The rest are counted, and the counts logged every WINDOW s."""

    WINDOW = 10.0
    EACH = 10  # lines a window before counting only

    def __init__(self) -> None:
        self.started, self.counts = 0.0, dict[str, int]()

    def count(self, reason: str, source: str, now: float) -> None:
        COUNTERS.add("refusals", reason)
        if now - self.started >= self.WINDOW:
            if sum(self.counts.values()) > self.EACH:
                log("jit-refusals", seconds=round(now - self.started, 1), **self.counts)
            self.started, self.counts = now, {}
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if sum(self.counts.values()) <= self.EACH:
            log("jit-refused", reason=reason, source=source)


def run(args: argparse.Namespace) -> int:
    private = base64.b64decode(args.key.read_text().strip())
    public = handshake.x25519_public(private)
    opener = partial(handshake.open_initiation, private_key=private, public_key=public)
    lookup: Callable[[bytes], AccessPeer | None]
    changed = threading.Event()
    if args.registry:
        api = Corrosion(args.registry, timeout=5)
        registry = jitpeers.RegistryPeers(
            lambda: api.query(jitpeers.QUERY)[1],
            on_change=changed.set,
            access=args.access_cidr,
            fingerprint=lambda: api.query(jitpeers.FINGERPRINT)[1],
        )
        threading.Thread(target=registry.run, name="registry", daemon=True).start()
        # An initiation seen before the first read would be refused as unknown (the client then
        # retries in 5 s): wait for it a little, not for ever (Corrosion may be restarting too).
        registry.loaded.wait(5)
        lookup = registry.lookup

        def declared() -> dict[bytes, AccessPeer]:
            return registry.peers
    else:
        from_file = DeclaredPeers(args.peers)
        lookup = from_file.lookup

        def declared() -> dict[bytes, AccessPeer]:
            from_file.lookup(b"")  # reads the file again when it changed
            return from_file.peers
    activity: dict[str, tuple[int, float]] = {}
    closed = {int(p) for p in args.closed_ports.split(",") if p}
    rules = AccessRules(args.mesh_address, closed) if args.mesh_address else None
    if args.access_cidr is not None:
        threading.Thread(
            target=reap_forever, args=(args, declared, activity, changed, rules), name="reap", daemon=True
        ).start()
    admission = Admission(
        opener,
        lookup,
        ReplayMemory(args.state),
        mac1_problem=partial(handshake.mac1_problem, public_key=public),
        cookies=CookieJar(public, time.monotonic()),
        overall=(args.openings, args.openings),
        now=time.monotonic(),
    )
    watcher = initiations.Watcher(args.port)
    refusals = Refusals()
    COUNTERS.start()
    log("jit-watching", interface=args.interface, port=args.port, peers="registry" if args.registry else "file")
    for knock in watcher:
        now = time.monotonic()
        verdict = admission.decide(knock, now, time.time())
        source = f"{knock.source}:{knock.source_port}"
        if verdict.reason == "cookie" and admission.cookies is not None:
            try:
                initiations.answer(knock, admission.cookies.reply(knock.message, knock.source, knock.source_port, now))
            except OSError as e:
                warn("jit-cookie-failed", source=source, error=e)
        if not verdict.install or verdict.peer is None:
            refusals.count(verdict.reason, source, now)
            continue
        key = base64.b64encode(verdict.peer.public_key).decode()
        started = time.monotonic()
        try:
            if kernel_peers(args.interface).get(verdict.peer.public_key) == {f"{verdict.peer.address}/32"}:
                continue  # the interface knows it and answers; its timestamp is remembered all the same
            # Not there, or there with other allowed-ips (`wg set` replaces them): installed as declared.
            install(args.interface, verdict.peer)
            activity[key] = (0, time.time())
            initiations.hand_back(knock)
        except (subprocess.SubprocessError, OSError) as e:
            warn("jit-install-failed", peer=key, error=e)  # the client's retry comes through here again
            continue
        if rules is not None and verdict.peer.allow:
            # After the hand-back: the client's answer does not wait for the firewall.
            try:
                sync_rules(rules, args.interface, declared)
            except (subprocess.SubprocessError, OSError) as e:
                warn("jit-rules-failed", peer=key, error=e)  # the reaper compares again within RULES_CHECK
        COUNTERS.add("installs")
        log("jit-installed", peer=key, address=verdict.peer.address, source=source,
            ms=round((time.monotonic() - started) * 1000, 1))  # fmt: skip
    return 0
