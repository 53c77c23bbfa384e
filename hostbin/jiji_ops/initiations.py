"""Seeing handshake initiations that arrive for the WireGuard port, beside the interface that
listens there (issue 21's just-in-time peers). The interface drops an initiation from a key it
does not know, without a word; a packet socket with a kernel filter gets a copy of it.

The filter runs in the kernel (classic BPF on an AF_PACKET socket), so nothing but initiations
ever reaches this process: IPv4, UDP, not a fragment, to the port, a UDP length of exactly one
initiation, first byte 1. A flood of other traffic to the port costs this process nothing; what
passes the filter still has its mac1 checked (handshake.open_initiation) before any
Diffie-Hellman. SOCK_DGRAM packet sockets start at the network header, so the same filter works
on Ethernet, loopback and tunnel devices.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from .handshake import INITIATION_SIZE, INITIATION_TYPE

ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26
UDP_HEADER = 8

# Classic BPF opcodes (linux/filter.h).
_LD_B_ABS, _LD_H_ABS = 0x30, 0x28
_LD_B_IND, _LD_H_IND = 0x50, 0x48
_LDX_B_MSH = 0xB1
_JEQ_K, _JSET_K = 0x15, 0x45
_RET_K = 0x06


def filter_program(port: int) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) instructions that keep a copy of each initiation to `port`.

    Offsets are from the IPv4 header (a SOCK_DGRAM packet socket for ETH_P_IP)."""
    drop = 0xFF  # patched below: every "no" jumps to the final `ret 0`
    program = [
        (_LD_B_ABS, 0, 0, 9),  # protocol
        (_JEQ_K, 0, drop, socket.IPPROTO_UDP),
        (_LD_H_ABS, 0, 0, 6),  # flags and fragment offset
        (_JSET_K, drop, 0, 0x1FFF),  # a later fragment has no UDP header
        (_LDX_B_MSH, 0, 0, 0),  # x = IPv4 header length
        (_LD_H_IND, 0, 0, 2),  # UDP destination port
        (_JEQ_K, 0, drop, port),
        (_LD_H_IND, 0, 0, 4),  # UDP length
        (_JEQ_K, 0, drop, UDP_HEADER + INITIATION_SIZE),
        (_LD_B_IND, 0, 0, UDP_HEADER),  # the message type
        (_JEQ_K, 0, drop, INITIATION_TYPE),
        (_RET_K, 0, 0, 0xFFFF),
        (_RET_K, 0, 0, 0),
    ]
    last = len(program) - 1
    return [
        (code, last - i - 1 if jt == drop else jt, last - i - 1 if jf == drop else jf, k)
        for i, (code, jt, jf, k) in enumerate(program)
    ]


@dataclass(frozen=True)
class Knock:
    """An initiation as it arrived: the sender's address and port, the address and port it was
    sent to, and the 148 bytes."""

    source: str
    source_port: int
    destination: str
    port: int
    message: bytes


def parse(datagram: bytes) -> Knock | None:
    """The initiation in an IPv4 packet that passed the filter; None for anything malformed (the
    filter already checked the fields it reads, this checks the lengths it did not)."""
    if len(datagram) < 20 or datagram[0] >> 4 != 4:
        return None
    header = (datagram[0] & 0x0F) * 4
    start = header + UDP_HEADER
    if header < 20 or len(datagram) < start + INITIATION_SIZE:
        return None
    source_port, port = struct.unpack_from(">HH", datagram, header)
    return Knock(
        str(ipaddress.IPv4Address(datagram[12:16])),
        source_port,
        str(ipaddress.IPv4Address(datagram[16:20])),
        port,
        datagram[start : start + INITIATION_SIZE],
    )


def hand_back(knock: Knock) -> None:
    """The initiation given to the local WireGuard socket again, as the client sent it (its source
    address and port kept, UDP checksum 0: none), once its peer is installed. WireGuard then
    consumes it as if it had just arrived: it records the client's timestamp, so a replay of this
    initiation is refused, and answers the client at once. Initiating back from the server instead
    would leave the new peer without a timestamp, and a replayed first initiation would be
    accepted and could move the peer's endpoint. Needs CAP_NET_RAW."""
    _send_udp(knock.source, knock.source_port, knock.destination, knock.port, knock.message)


def answer(knock: Knock, payload: bytes) -> None:
    """`payload` sent to the initiation's source, from the address and port it was sent to (as
    WireGuard's own answer would be): a cookie reply. UDP checksum 0, as hand_back."""
    _send_udp(knock.destination, knock.port, knock.source, knock.source_port, payload)


def _send_udp(source: str, source_port: int, destination: str, port: int, payload: bytes) -> None:
    """One UDP datagram with the source address and port given, through a raw socket (with
    IP_HDRINCL the kernel fills in the header checksum; UDP's is 0: none). Needs CAP_NET_RAW."""
    length = 20 + UDP_HEADER + len(payload)
    packet = (
        struct.pack(">BBHHHBBH4s4s", 0x45, 0, length, 0, 0x4000, 64, socket.IPPROTO_UDP, 0,
                    ipaddress.IPv4Address(source).packed, ipaddress.IPv4Address(destination).packed)
        + struct.pack(">HHHH", source_port, port, UDP_HEADER + len(payload), 0)
        + payload
    )  # fmt: skip
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.sendto(packet, (destination, 0))


class Watcher:
    """A packet socket that receives copies of initiations to `port` (on `interface`, or on every
    interface of the namespace). Needs CAP_NET_RAW."""

    def __init__(self, port: int, interface: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        try:
            program = filter_program(port)
            # struct sock_fprog {unsigned short len; struct sock_filter *filter;}: the kernel copies
            # the instructions during setsockopt, so the buffer need only live until it returns.
            code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in program))
            self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HP", len(program), ctypes.addressof(code)))
            if interface:
                self.sock.bind((interface, socket.htons(ETH_P_IP)))
            # Packets queued between the socket's creation and the filter are unfiltered.
            self.sock.setblocking(False)
            while True:
                try:
                    self.sock.recv(65535)
                except BlockingIOError:
                    break
            self.sock.setblocking(True)
        except BaseException:
            self.sock.close()
            raise

    def __iter__(self) -> Iterator[Knock]:
        while True:
            data, (interface, *_) = self.sock.recvfrom(65535)
            # What arrives on lo was sent on this host: hand_back's own copies of an initiation
            # (seen going out and coming in), never a client's.
            if interface == "lo":
                continue
            knock = parse(data)
            if knock is not None:
                yield knock

    def close(self) -> None:
        self.sock.close()
