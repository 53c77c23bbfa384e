"""Turns one query packet into one reply packet, without building DNS objects on the hot path.

The fast path handles what real clients send (one question, optional EDNS OPT, opcode QUERY):
it walks the question's labels, looks the lower-cased question up in the table's pre-encoded
answers and concatenates bytes. Everything else goes through dnslib once (`_slow`) to be either
answered with an error code or normalised into a plain query and sent back through the fast path,
so there is one set of answering rules. Replies are whole: fitting one into a UDP datagram is the
UDP transport's job (udpsize.py); TCP sends them as they are.
"""

from __future__ import annotations

import struct
from typing import Final

from dnslib import QTYPE, DNSRecord  # type: ignore[import-untyped]

from . import wire
from .events import log_limited
from .owner import TableOwner


class _Forward:
    """Sentinel: the query is for a name outside our domain and the client may recurse."""

    def __repr__(self) -> str:
        return "FORWARD"


FORWARD: Final = _Forward()

# The negative cache is bounded by entries and by the bytes of its keys (names are at most 255
# bytes, so the entry bound alone would allow ~20 MB; the byte bound keeps it near 2 MB).
NEGATIVE_ENTRIES = 65536
NEGATIVE_BYTES = 2 << 20

# Reply flag bytes (QR, AA, RD echoed, RA when recursion is offered), indexed by rd | ra << 1.
_OK_FLAGS = tuple(bytes([0x84 | (i & 1), 0x80 if i & 2 else 0]) for i in range(4))


# Authoritative reply flags per rcode, indexed like _OK_FLAGS.
_AUTH_FLAGS = tuple(
    tuple(bytes([0x84 | (i & 1), (0x80 if i & 2 else 0) | rcode]) for i in range(4)) for rcode in range(16)
)
_COUNTS_SOA_AUTHORITY = (wire.counts(1, 0, 1, 0), wire.counts(1, 0, 1, 1))
_COUNTS_SOA_ANSWER = (wire.counts(1, 1, 0, 0), wire.counts(1, 1, 0, 1))


def _flags(rd: int, ra: bool, rcode: int, authoritative: bool = True) -> bytes:
    hi = 0x80 | (0x04 if authoritative else 0) | rd
    return bytes([hi, (0x80 if ra else 0) | rcode])


class Responder:
    """Answers for one domain from the table `tables` serves (it never changes the table)."""

    def __init__(self, tables: TableOwner, negative_ttl: int) -> None:
        self.tables = tables
        self.negative_ttl = negative_ttl
        self.serial = 1
        self._zone = tables.table.domain_wire
        self._zone_len = len(self._zone)
        self._soa_by_offset: dict[int, bytes] = {}
        self._opt = (wire.opt_record(False), wire.opt_record(True))
        # Lower-cased question -> (flag bytes by rd|ra, SOA) of its NXDOMAIN or no-data answer:
        # repeated misses skip the zone checks. Valid for one table generation; bounded.
        self._negative: dict[bytes, tuple[tuple[bytes, ...], bytes]] = {}
        self._negative_bytes = 0
        self._negative_generation = 0

    def answer(self, data: bytes, recursion: bool) -> bytes | _Forward | None:
        """The whole reply to `data`, FORWARD, or None when the packet deserves no reply at all."""
        n = len(data)
        if n < 17 or data[2] & 0xFA or data[4:10] != b"\x00\x01\x00\x00\x00\x00" or data[10]:
            return self._slow(data, recursion)
        name_end = wire.walk_name(data, wire.HEADER_LEN)
        if name_end < 0:
            if name_end == wire.NAME_TOO_LONG:
                return self.error_reply(data, wire.RCODE_FORMERR, recursion)
            return self._slow(data, recursion)  # compressed or cut short: dnslib decides
        end = name_end + 4
        if data[11] == 0:
            if end != n:
                return self._slow(data, recursion)
            edns = 0
        elif data[11] == 1:
            # One OPT record: root owner, type 41, payload, ext-rcode, version, flags, rdlen.
            opt = data[end:]
            if len(opt) < 11 or opt[:3] != b"\x00\x00\x29" or opt[6] or len(opt) != 11 + (opt[9] << 8 | opt[10]):
                return self._slow(data, recursion)
            edns = 1 + (opt[7] >> 7)  # 1 without DO, 2 with DO
        else:
            return self._slow(data, recursion)
        question = data[12:end]
        # Lower-casing the type and class bytes too is safe: no key we store has a byte in A-Z.
        lowered = question.lower()
        table = self.tables.table
        hit = table.answers.get(lowered)
        if hit is None:
            negative = self._negative.get(lowered)
            if negative is not None and self._negative_generation == table.generation:
                return (
                    data[:2]
                    + negative[0][(data[2] & 1) | (2 if recursion else 0)]
                    + _COUNTS_SOA_AUTHORITY[edns > 0]
                    + question
                    + negative[1]
                    + (self._opt[edns - 1] if edns else b"")
                )
            return self._miss(data, question, lowered, edns, recursion)
        if edns:
            return (
                data[:2]
                + _OK_FLAGS[(data[2] & 1) | (2 if recursion else 0)]
                + hit[1]
                + question
                + hit[2]
                + self._opt[edns - 1]
            )
        return data[:2] + _OK_FLAGS[(data[2] & 1) | (2 if recursion else 0)] + hit[0] + question + hit[2]

    # ---- names without a pre-encoded answer ------------------------------------------------
    def _miss(self, data: bytes, question: bytes, lowered: bytes, edns: int, recursion: bool) -> bytes | _Forward:
        qname = lowered[:-4]
        zone_start = len(qname) - self._zone_len
        if zone_start < 0 or not qname.endswith(self._zone):
            return FORWARD if recursion else self._error(data, question, wire.RCODE_REFUSED, edns, recursion)
        if zone_start:
            # The zone must start at a label boundary ("xjiji." is not in "jiji.").
            labels: list[int] = []
            wire.walk_name(qname, 0, labels)
            if zone_start not in labels:
                return FORWARD if recursion else self._error(data, question, wire.RCODE_REFUSED, edns, recursion)
        if not self.tables.ready:
            return self._error(data, question, wire.RCODE_SERVFAIL, edns, recursion)
        if not (question.endswith(b"\x00\x01") or question.endswith(b"\x00\xff")):
            return self._error(data, question, wire.RCODE_REFUSED, edns, recursion)
        soa = self._soa(12 + zone_start)
        flag_index = (data[2] & 1) | (2 if recursion else 0)
        qtype = question[-4:-2]
        if qname in self.tables.table.existing:
            if qtype == b"\x00\xff" and zone_start:
                return self._any(data, question, qname, edns, recursion, soa)
            if not zone_start and qtype in (b"\x00\x06", b"\x00\xff"):
                head = _AUTH_FLAGS[0][flag_index] + _COUNTS_SOA_ANSWER[edns > 0]
                return data[:2] + head + question + soa + (self._opt[edns - 1] if edns else b"")
            flags = _AUTH_FLAGS[wire.RCODE_NOERROR]
        else:
            flags = _AUTH_FLAGS[wire.RCODE_NXDOMAIN]
        self._remember_negative(lowered, flags, soa)
        return (
            data[:2]
            + flags[flag_index]
            + _COUNTS_SOA_AUTHORITY[edns > 0]
            + question
            + soa
            + (self._opt[edns - 1] if edns else b"")
        )

    def _remember_negative(self, lowered: bytes, flags: tuple[bytes, ...], soa: bytes) -> None:
        if self._negative_generation != self.tables.table.generation:
            self._clear_negative()
        elif len(self._negative) >= NEGATIVE_ENTRIES or self._negative_bytes >= NEGATIVE_BYTES:
            # A flood of distinct missing names: start over rather than grow (logged, rate-limited).
            log_limited("negative_cache_full", entries=len(self._negative), key_bytes=self._negative_bytes)
            self._clear_negative()
        self._negative[lowered] = (flags, soa)
        self._negative_bytes += len(lowered)

    def _clear_negative(self) -> None:
        self._negative.clear()
        self._negative_bytes = 0
        self._negative_generation = self.tables.table.generation

    def _any(self, data: bytes, question: bytes, qname: bytes, edns: int, recursion: bool, soa: bytes) -> bytes:
        """ANY for a service name: its A and AAAA records (RFC 8482 allows less; clients expect these)."""
        answers = self.tables.table.answers
        entries = [answers.get(qname + qtype + b"\x00\x01") for qtype in (b"\x00\x01", b"\x00\x1c")]
        found = [e for e in entries if e is not None]
        if not found:  # an existing name always has records; guard against a concurrent removal
            head = _AUTH_FLAGS[0][(data[2] & 1) | (2 if recursion else 0)] + _COUNTS_SOA_AUTHORITY[edns > 0]
            return data[:2] + head + question + soa + (self._opt[edns - 1] if edns else b"")
        count = sum(int.from_bytes(e[0][2:4], "big") for e in found)
        flags = _OK_FLAGS[(data[2] & 1) | (2 if recursion else 0)]
        reply = data[:2] + flags + wire.counts(1, count, 0, 1 if edns else 0) + question
        return reply + b"".join(e[2] for e in found) + (self._opt[edns - 1] if edns else b"")

    def _soa(self, zone_offset: int) -> bytes:
        soa = self._soa_by_offset.get(zone_offset)
        if soa is None:
            soa = wire.soa_record(zone_offset, self.negative_ttl, self.serial, self.negative_ttl)
            self._soa_by_offset[zone_offset] = soa
        return soa

    def _error(self, data: bytes, question: bytes, rcode: int, edns: int, recursion: bool) -> bytes:
        ar = 1 if edns else 0
        opt = self._opt[edns - 1] if edns else b""
        authoritative = rcode != wire.RCODE_REFUSED
        return (
            data[:2] + _flags(data[2] & 1, recursion, rcode, authoritative) + wire.counts(1, 0, 0, ar) + question + opt
        )

    def servfail(self, data: bytes, recursion: bool) -> bytes | None:
        """SERVFAIL for a query that was forwarded and got no upstream answer, or whose handling
        failed; None for a packet that is no query (answering a response could start a loop)."""
        if len(data) < wire.HEADER_LEN or data[2] & 0x80:
            return None
        return self.error_reply(data, wire.RCODE_SERVFAIL, recursion)

    def error_reply(self, data: bytes, rcode: int, recursion: bool, ext_rcode: int = 0) -> bytes:
        """An error built by hand from the query's bytes: the question is echoed only when it is
        plain and within the name limits, else the reply has none (QDCOUNT 0, nothing invented);
        our OPT is added when the query had one (with `ext_rcode`'s upper bits for BADVERS)."""
        end = wire.question_end(data)
        if end is None:
            return self._header_only(data, rcode, recursion)
        edns = wire.edns_of(data, end)
        hi = 0x80 | (data[2] & 0x79)  # keep opcode and RD, set QR
        lo = (0x80 if recursion else 0) | (rcode & 0x0F)
        reply = data[:2] + bytes([hi, lo]) + wire.counts(1, 0, 0, 1 if edns else 0) + data[12:end]
        if edns:
            reply += b"\x00" + struct.pack(
                ">HHBBHH", wire.QTYPE_OPT, wire.EDNS_PAYLOAD, ext_rcode >> 4, 0, 0x8000 if edns == 2 else 0, 0
            )
        return reply

    # ---- everything unusual, once through dnslib (parsing only) ------------------------------
    def _slow(self, data: bytes, recursion: bool) -> bytes | _Forward | None:
        if len(data) < wire.HEADER_LEN or data[2] & 0x80:
            return None  # not even a header, or a response: answering could start a loop
        if (data[2] >> 3) & 0x0F:
            # Header only: an UPDATE's or NOTIFY's sections mean something else than a query's.
            return self._header_only(data, wire.RCODE_NOTIMP, recursion)
        # dnslib would accept some names over the limits while parsing and fail later.
        if wire.walk_name(data, wire.HEADER_LEN) == wire.NAME_TOO_LONG:
            return self.error_reply(data, wire.RCODE_FORMERR, recursion)
        try:
            query = DNSRecord.parse(data)
        except Exception:
            return self._header_only(data, wire.RCODE_FORMERR, recursion)
        if len(query.questions) != 1:
            return self.error_reply(data, wire.RCODE_FORMERR, recursion)
        opts = [rr for rr in query.ar if rr.rtype == QTYPE.OPT]
        if len(opts) > 1:
            return self.error_reply(data, wire.RCODE_FORMERR, recursion)
        question = query.questions[0]
        # The name as dnslib decompressed it, walked like any other: an empty label, a long one or
        # a long name stops the walk short of its end.
        name = b"".join(bytes([len(label)]) + label for label in question.qname.label) + b"\x00"
        if wire.walk_name(name, 0) != len(name):
            return self.error_reply(data, wire.RCODE_FORMERR, recursion)
        if opts and (opts[0].ttl >> 16) & 0xFF != 0:
            return self.error_reply(data, 0, recursion, ext_rcode=wire.EXT_RCODE_BADVERS)
        normal = bytearray(data[:2])
        normal += bytes([data[2] & 0x01, 0]) + wire.counts(1, 0, 0, len(opts))
        normal += name
        normal += struct.pack(">HH", question.qtype, question.qclass)
        if opts:
            payload = opts[0].rclass
            do = (opts[0].ttl >> 15) & 1
            normal += b"\x00" + struct.pack(">HHBBHH", wire.QTYPE_OPT, payload, 0, 0, do << 15, 0)
        normal_bytes = bytes(normal)
        if normal_bytes == data:
            # The fast path already refused exactly this packet: it would refuse it again.
            return self.error_reply(data, wire.RCODE_FORMERR, recursion)
        return self.answer(normal_bytes, recursion)

    @staticmethod
    def _header_only(data: bytes, rcode: int, recursion: bool) -> bytes:
        hi = 0x80 | (data[2] & 0x79)  # keep opcode and RD, set QR
        return data[:2] + bytes([hi, (0x80 if recursion else 0) | rcode]) + wire.counts(0, 0, 0, 0)
