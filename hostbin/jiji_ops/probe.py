"""Which peers answer over jiji0 right now: one ICMP echo to each peer's mesh address.

A WireGuard handshake only says a peer was reachable up to 3 minutes ago (sessions re-key every
2 minutes), so a server cut off a minute ago still has a "recent" handshake. An echo through the
tunnel answers the question `status` is asked: can this server reach that one now?
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Iterable

ECHO_REQUEST, ECHO_REPLY = 8, 0


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int) -> bytes:
    payload = b"jiji-net status"
    header = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, checksum(header + payload), ident, seq) + payload


def parse_reply(packet: bytes) -> tuple[int, int] | None:
    """(ident, seq) of an echo reply read from a raw IPv4 socket (IP header first), else None."""
    if len(packet) < 20:
        return None
    header_len = (packet[0] & 0x0F) * 4
    icmp = packet[header_len : header_len + 8]
    if len(icmp) < 8:
        return None
    kind, code, _sum, ident, seq = struct.unpack("!BBHHH", icmp)
    if kind != ECHO_REPLY or code != 0:
        return None
    return ident, seq


def mesh_address(allowed_ips: Iterable[str]) -> str | None:
    """A peer's own jiji0 address: the first host of its server subnet (10.210.N.0/24 -> .1)."""
    for cidr in allowed_ips:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            continue
        if net.version == 4 and net.num_addresses > 2:
            return str(net.network_address + 1)
    return None


def answering(addresses: Iterable[str], timeout: float = 1.5) -> set[str] | None:
    """The addresses that answered an echo within `timeout` s (each asked twice, the second time
    halfway, so one lost packet or a handshake in progress is not a verdict); None when this
    process may not open a raw socket (not root), so nothing was learnt."""
    targets = sorted(set(addresses))
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    except PermissionError:
        return None
    ident = os.getpid() & 0xFFFF
    by_seq = dict(enumerate(targets))
    answered: set[str] = set()
    with sock:
        sock.setblocking(False)
        deadline = time.monotonic() + timeout
        resend_at = time.monotonic() + timeout / 2
        _send_all(sock, by_seq, ident)
        while len(answered) < len(targets):
            now = time.monotonic()
            if now >= deadline:
                break
            if resend_at and now >= resend_at:
                _send_all(sock, {s: a for s, a in by_seq.items() if a not in answered}, ident)
                resend_at = 0.0
            ready, _, _ = select.select([sock], [], [], min(deadline, resend_at or deadline) - now)
            if not ready:
                continue
            try:
                packet, (source, _port) = sock.recvfrom(2048)
            except BlockingIOError:
                continue
            reply = parse_reply(packet)
            # A reply counts only from the address asked, with our ident and that address's seq.
            if reply and reply[0] == ident and by_seq.get(reply[1]) == source:
                answered.add(source)
    return answered


def _send_all(sock: socket.socket, by_seq: dict[int, str], ident: int) -> None:
    for seq, address in by_seq.items():
        try:
            sock.sendto(echo_request(ident, seq), (address, 0))
        except OSError:
            pass  # no route or no key yet: the address simply does not answer
