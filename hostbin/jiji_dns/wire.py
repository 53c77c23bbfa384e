"""DNS wire-format constants and byte builders shared by the table and the query path.

Answers are assembled from pre-encoded byte strings: a reply echoes the query's own question
(at offset 12, so its case survives for 0x20 resolvers) and every owner name in the answer is a
compression pointer back into that question.
"""

from __future__ import annotations

import struct

HEADER_LEN = 12
QTYPE_A = 1
QTYPE_NS = 2
QTYPE_SOA = 6
QTYPE_AAAA = 28
QTYPE_OPT = 41
QTYPE_ANY = 255
QCLASS_IN = 1

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5
EXT_RCODE_BADVERS = 16

FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080

# What we advertise in our OPT record and the most we send over UDP (the DNS flag day value).
EDNS_PAYLOAD = 1232
PLAIN_UDP_LIMIT = 512

POINTER_TO_QNAME = b"\xc0\x0c"


class NameError_(ValueError):
    """A name that cannot be encoded as a DNS name."""


def encode_name(name: str) -> bytes:
    """Wire form of a dotted name, lower-cased, root included: 'a.jiji' -> b'\\x01a\\x04jiji\\x00'."""
    out = bytearray()
    for label in name.strip(".").lower().split("."):
        if not label:
            continue
        raw = label.encode("ascii")
        if len(raw) > 63:
            raise NameError_(f"label {label!r} is longer than 63 bytes")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise NameError_(f"name {name!r} is longer than 255 bytes")
    return bytes(out)


def question_key(qname_wire: bytes, qtype: int, qclass: int = QCLASS_IN) -> bytes:
    """The lookup key of a question: lower-cased wire name followed by type and class."""
    return qname_wire.lower() + struct.pack(">HH", qtype, qclass)


def a_record(ip4: bytes, ttl: int) -> bytes:
    return POINTER_TO_QNAME + struct.pack(">HHIH", QTYPE_A, QCLASS_IN, ttl, 4) + ip4


def aaaa_record(ip6: bytes, ttl: int) -> bytes:
    return POINTER_TO_QNAME + struct.pack(">HHIH", QTYPE_AAAA, QCLASS_IN, ttl, 16) + ip6


def soa_record(zone_offset: int, ttl: int, serial: int, negative_ttl: int) -> bytes:
    """SOA of the zone whose name starts at `zone_offset` in the reply (a pointer target)."""
    zone = struct.pack(">H", 0xC000 | zone_offset)
    rdata = b"\x02ns" + zone + b"\x0ahostmaster" + zone + struct.pack(">IIIII", serial, 3600, 600, 86400, negative_ttl)
    return zone + struct.pack(">HHIH", QTYPE_SOA, QCLASS_IN, ttl, len(rdata)) + rdata


def opt_record(do_bit: bool) -> bytes:
    """Our OPT pseudo-record: version 0, our payload size, the query's DO bit echoed (RFC 3225)."""
    return b"\x00" + struct.pack(">HHBBHH", QTYPE_OPT, EDNS_PAYLOAD, 0, 0, 0x8000 if do_bit else 0, 0)


def counts(qd: int, an: int, ns: int, ar: int) -> bytes:
    return struct.pack(">HHHH", qd, an, ns, ar)


MAX_NAME_WIRE = 255  # RFC 1035 2.3.4: a name's wire form, root label included
MAX_LABEL = 63


# walk_name's verdicts on a name that is not plain or not within the limits.
NAME_POINTER = -1  # a compression pointer: only dnslib follows those
NAME_CUT = -2  # the data ends inside the name
NAME_TOO_LONG = -3  # a label over 63 bytes or a name over 255: FORMERR


def walk_name(data: bytes, start: int, labels: list[int] | None = None) -> int:
    """The one walk over a wire name's labels (queries, replies, the table's names): the offset
    just past the plain name at `start` (root label included), or a NAME_* verdict. With
    `labels`, the offset of each label's length byte is appended to it, so callers can split the
    name (at the zone, into text) without walking it again."""
    i = start
    try:  # on the hot path: an IndexError at the end is cheaper than a bound check per label
        length = data[i]
        while length:
            if length > MAX_LABEL:
                # 0x40-0xBF are no label lengths at all; 0xC0 and up start a pointer.
                return NAME_POINTER if length >= 0xC0 else NAME_TOO_LONG
            if labels is not None:
                labels.append(i)
            i += length + 1
            if i - start >= MAX_NAME_WIRE:
                return NAME_TOO_LONG
            length = data[i]
    except IndexError:
        return NAME_CUT
    return i + 1


def question_end(data: bytes) -> int | None:
    """End offset of the first question when it is plain (no compression) and within the name
    limits, else None. The one question an error reply may echo without re-encoding it."""
    if len(data) < HEADER_LEN or not (data[4] or data[5]):
        return None
    name_end = walk_name(data, HEADER_LEN)
    if name_end < 0 or name_end + 4 > len(data):
        return None
    return name_end + 4


def edns_of(data: bytes, end: int) -> int:
    """0 without an OPT record right after the question at `end`, 1 with one, 2 with DO set."""
    if data[4:10] != b"\x00\x01\x00\x00\x00\x00" or not (data[10] or data[11]):
        return 0
    opt = data[end : end + 11]
    if len(opt) < 11 or opt[:3] != b"\x00\x00\x29":
        return 0
    return 1 + (opt[7] >> 7)
