"""The firewall rules jiji-jit keeps for access peers' `allow` (issue 21): chain JIJI-ACCESS, which
the network unit makes and jumps to for traffic from the access range over jiji0, and which only
jiji-jit fills. A peer gets its allowed ports on this server's mesh address while it is in the
kernel with its declared address; Corrosion's ports are never opened, whatever the registry says.

The chain is replaced whole in one `iptables-restore --noflush` transaction when it differs from
what is wanted, so a peer never sees a moment with a rule missing or one left over."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterable

from .admission import AccessPeer

CHAIN = "JIJI-ACCESS"


def wanted_rules(present: Iterable[AccessPeer], mesh_address: str, closed: set[int]) -> list[str]:
    """The chain's rules for the peers in the kernel, as `iptables -S` prints them back."""
    out = []
    for peer in sorted(present, key=lambda p: tuple(int(o) for o in p.address.split("."))):
        for proto, port in peer.allow:
            if port not in closed:
                out.append(f"-A {CHAIN} -s {peer.address}/32 -d {mesh_address}/32 -p {proto} -m {proto} --dport {port} -j ACCEPT")
    return out


def present_peers(kernel: dict[bytes, set[str]], declared: dict[bytes, AccessPeer]) -> list[AccessPeer]:
    """The declared peers in the kernel with their own address (one let in as declared)."""
    return [p for key, p in declared.items() if kernel.get(key) == {f"{p.address}/32"}]


class AccessRules:
    """Keeps JIJI-ACCESS equal to the rules wanted; `sync` may be called from any thread."""

    def __init__(self, mesh_address: str, closed: set[int]) -> None:
        self.mesh_address, self.closed = mesh_address, closed
        self._lock = threading.Lock()

    def sync(self, present: Iterable[AccessPeer]) -> int | None:
        """The number of rules written when the chain had to change; None when it was as wanted."""
        wanted = wanted_rules(present, self.mesh_address, self.closed)
        with self._lock:
            shown = subprocess.run(
                ["iptables", "-w", "-S", CHAIN], capture_output=True, text=True, timeout=10, check=True
            ).stdout
            if [line for line in shown.splitlines() if line.startswith("-A ")] == wanted:
                return None
            document = "\n".join(["*filter", f":{CHAIN} - [0:0]", *wanted, "COMMIT", ""])
            subprocess.run(["iptables-restore", "-w", "--noflush"], input=document, text=True, timeout=10, check=True)
            return len(wanted)
