"""`wg show jiji0 dump`, parsed. The interface line's first field is the private key: it is
dropped while parsing and never stored, printed or returned."""

from __future__ import annotations

from dataclasses import dataclass

# An active session re-handshakes every 2 minutes and keepalive is 25 s, so no handshake for
# 3 minutes means the peer is not reachable.
STALE_AFTER = 180


@dataclass(frozen=True)
class Peer:
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int  # Unix seconds; 0 = never
    rx_bytes: int
    tx_bytes: int
    keepalive: int | None

    def handshake_age(self, now: float) -> int | None:
        return None if self.latest_handshake == 0 else max(0, int(now - self.latest_handshake))

    def stale(self, now: float) -> bool:
        age = self.handshake_age(now)
        return age is None or age > STALE_AFTER


@dataclass(frozen=True)
class Interface:
    public_key: str
    listen_port: int
    peers: tuple[Peer, ...]


def parse_dump(text: str) -> Interface:
    lines = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not lines or len(lines[0]) < 4:
        raise ValueError("wg show dump: no interface line")
    _private, public_key, port = lines[0][0], lines[0][1], lines[0][2]
    del _private
    peers = []
    for f in lines[1:]:
        if len(f) < 8:
            raise ValueError(f"wg show dump: short peer line ({len(f)} fields)")
        peers.append(
            Peer(
                public_key=f[0],
                endpoint=None if f[2] == "(none)" else f[2],
                allowed_ips=tuple(a for a in f[3].split(",") if a and a != "(none)"),
                latest_handshake=int(f[4]),
                rx_bytes=int(f[5]),
                tx_bytes=int(f[6]),
                keepalive=None if f[7] == "off" else int(f[7]),
            )
        )
    return Interface(public_key=public_key, listen_port=int(port), peers=tuple(peers))


def names_from_config(text: str) -> dict[str, str]:
    """Public key -> server name from jiji0.conf, where the program writes `# name` above each
    [Peer]: names for the status table even when the registry cannot be read."""
    names, pending = {}, ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            pending = line.lstrip("#").strip()
        elif line.replace(" ", "").startswith("PublicKey=") and pending:
            names[line.split("=", 1)[1].strip()] = pending
        elif line == "[Interface]":
            pending = ""
    return names
