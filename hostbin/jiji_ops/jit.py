"""`jiji-net jit`: access peers let into WireGuard just in time (issue 21). Captures initiations
to the interface's port (initiations.Watcher), decides about each (admission.Admission), and for a
declared key not in the kernel installs the peer with its access address as allowed-ips and hands
the captured initiation back, so WireGuard answers the client at once and records its timestamp.

The server's private key is read from its file; it is never on a command line or in a log. Peers
are declared, for now, in a JSON file (`[{"public_key": ..., "address": ..., "expires_at": ...,
"revoked": ...}]`), read again when it changes; the registry table is the next piece.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import ipaddress
import json
import subprocess
import time
from functools import partial
from pathlib import Path

from jiji_common.logline import log, warn

from . import handshake, initiations
from .admission import AccessPeer, Admission, ReplayMemory


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interface", default="jiji0")
    p.add_argument("--port", type=int, default=51820, help="the interface's listen port")
    p.add_argument("--key", type=Path, required=True, help="the interface's private key file")
    p.add_argument("--peers", type=Path, required=True, help="declared access peers (JSON)")
    p.add_argument("--state", type=Path, required=True, help="where each key's newest timestamp is kept")


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


def kernel_peers(interface: str) -> set[bytes]:
    out = subprocess.run(["wg", "show", interface, "peers"], capture_output=True, text=True, check=True, timeout=10)
    return {base64.b64decode(line) for line in out.stdout.split()}


def install(interface: str, peer: AccessPeer) -> None:
    key = base64.b64encode(peer.public_key).decode()
    subprocess.run(["wg", "set", interface, "peer", key, "allowed-ips", f"{peer.address}/32"], check=True, timeout=10)


def run(args: argparse.Namespace) -> int:
    private = base64.b64decode(args.key.read_text().strip())
    opener = partial(handshake.open_initiation, private_key=private, public_key=handshake.x25519_public(private))
    admission = Admission(opener, DeclaredPeers(args.peers).lookup, ReplayMemory(args.state), now=time.monotonic())
    watcher = initiations.Watcher(args.port)
    log("jit-watching", interface=args.interface, port=args.port)
    for knock in watcher:
        verdict = admission.decide(knock, time.monotonic(), time.time())
        source = f"{knock.source}:{knock.source_port}"
        if not verdict.install or verdict.peer is None:
            log("jit-refused", reason=verdict.reason, source=source)
            continue
        key = base64.b64encode(verdict.peer.public_key).decode()
        if verdict.peer.public_key in kernel_peers(args.interface):
            continue  # the interface knows it and answers; its timestamp is remembered all the same
        started = time.monotonic()
        try:
            install(args.interface, verdict.peer)
            initiations.hand_back(knock)
        except (subprocess.SubprocessError, OSError) as e:
            warn("jit-install-failed", peer=key, error=e)  # the client's retry comes through here again
            continue
        log("jit-installed", peer=key, address=verdict.peer.address, source=source,
            ms=round((time.monotonic() - started) * 1000, 1))  # fmt: skip
    return 0
