"""The UDP transport's size rule: a reply too big for the client's datagram goes out truncated.

The responder builds whole replies, and TCP sends them whole. Over UDP a reply may be at most
512 bytes without EDNS, else the size the client advertises in its OPT record (512 at least, our
EDNS_PAYLOAD at most); a bigger one is sent as its header with TC set, its question and our OPT,
and no records, so the client asks again over TCP (RFC 1035 4.2.1, RFC 6891 6.2.5).
"""

from __future__ import annotations

from dnslib import QTYPE, DNSRecord  # type: ignore[import-untyped]

from . import wire

# Our OPT record closes every reply to a query that had one (responder: `self._opt`).
_OPT_LEN = len(wire.opt_record(False))
_PLAIN_WITH_OPT = b"\x00\x01\x00\x00\x00\x00\x00\x01"  # QD 1, AN 0, NS 0, AR 1


def fit_udp(query: bytes, reply: bytes) -> bytes:
    """`reply` when it fits the datagram `query`'s sender accepts, else its truncated form."""
    # Every reply fits 512 bytes except large answer sets: only those pay for the limit.
    if len(reply) <= wire.PLAIN_UDP_LIMIT or len(reply) <= client_limit(query, reply):
        return reply
    return truncated(reply)


def client_limit(query: bytes, reply: bytes) -> int:
    """The largest UDP reply the sender of `query` accepts."""
    if not (reply[10] or reply[11]):  # our reply has no OPT because the query had none
        return wire.PLAIN_UDP_LIMIT
    return min(max(_advertised(query), wire.PLAIN_UDP_LIMIT), wire.EDNS_PAYLOAD)


def _advertised(query: bytes) -> int:
    end = wire.question_end(query)
    if end is not None and query[4:12] == _PLAIN_WITH_OPT and query[end : end + 3] == b"\x00\x00\x29":
        return query[end + 3] << 8 | query[end + 4]
    # An unusual query was answered in its normal form (responder._slow), whose OPT carries the
    # first OPT record dnslib found in the additional section: read the same one.
    opts = [rr for rr in DNSRecord.parse(query).ar if rr.rtype == QTYPE.OPT]
    return int(opts[0].rclass)


def truncated(reply: bytes) -> bytes:
    """`reply` with TC set and only its question and OPT left (its flags and rcode kept)."""
    end = wire.question_end(reply)
    if end is None:
        raise ValueError("a reply to truncate has no plain question")  # never: we echo it plain
    has_opt = 1 if reply[10] or reply[11] else 0
    opt = reply[-_OPT_LEN:] if has_opt else b""
    flags = bytes([reply[2] | wire.FLAG_TC >> 8, reply[3]])
    return reply[:2] + flags + wire.counts(1, 0, 0, has_opt) + reply[wire.HEADER_LEN : end] + opt
