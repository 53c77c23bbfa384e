"""Forwards names outside our domain to the upstream resolvers, in order, one timeout each.

Spoofing resistance (what an off-path attacker must guess): every UDP forward leaves from its
own socket, connected to the upstream, so the kernel picks a fresh random source port per query
and drops datagrams from any other address or port; the id comes from `secrets`. A reply is
accepted only with the query's id and the query's question (compared case-insensitively, as
the upstream may normalise case), so a reply for another name is dropped even when id and port
match. A connected socket also surfaces the upstream's ICMP "port unreachable" as
ConnectionRefusedError: the next upstream is tried at once instead of after the timeout.

UDP forwards are callbacks on the event loop (no task per query, see Forwarder for the rest). One in-flight bound covers UDP
and TCP forwards together: past it the client gets SERVFAIL at once instead of growing memory.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import select
import socket
import struct
from collections.abc import Callable

from . import wire
from .config import Endpoint
from .events import Counters

UDP_READ = 65535


def reply_matches(query_question: bytes, qid: bytes, reply: bytes) -> bool:
    """A reply for our query: QR set, our id, one question equal to ours ignoring case.

    `query_question` is the lower-cased question (name, type, class) of the query as sent.
    """
    return (
        len(reply) >= wire.HEADER_LEN + len(query_question)
        and reply[:2] == qid
        and reply[2] & 0x80 != 0
        and reply[4:6] == b"\x00\x01"
        and reply[12 : 12 + len(query_question)].lower() == query_question
    )


class _UdpForward:
    """One client query on its way through the upstreams."""

    __slots__ = ("query", "question", "done", "next_upstream", "sock", "attempt", "qid")

    def __init__(self, query: bytes, question: bytes, done: Callable[[bytes | None], None]) -> None:
        self.query = query
        self.question = question
        self.done: Callable[[bytes | None], None] | None = done
        self.next_upstream = 0
        self.sock: socket.socket | None = None
        self.attempt = 0
        self.qid = b""


class Forwarder:
    """Cost per UDP forward is kept to plain syscalls: the sockets sit in an epoll set of our
    own (one reader for the event loop, not a selector registration per socket), and since every
    attempt has the same timeout the deadlines form a FIFO queue checked by one timer."""

    def __init__(self, upstreams: tuple[Endpoint, ...], timeout: float, max_inflight: int, counters: Counters) -> None:
        self.upstreams = upstreams
        self.timeout = timeout
        self.max_inflight = max_inflight
        self.counters = counters
        self.inflight = 0
        self._udp: set[_UdpForward] = set()
        self._epoll: select.epoll | None = None
        self._by_fd: dict[int, _UdpForward] = {}
        self._deadlines: collections.deque[tuple[float, _UdpForward, int]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._ids = b""

    def acquire(self) -> bool:
        """Take an in-flight slot (UDP or TCP); False when all are taken (the caller SERVFAILs)."""
        if self.inflight >= self.max_inflight:
            self.counters.forwards_dropped_busy += 1
            return False
        self.inflight += 1
        self.counters.forwarded += 1
        return True

    def release(self) -> None:
        self.inflight -= 1

    # ---- UDP -------------------------------------------------------------------------------
    def forward_udp(self, query: bytes, done: Callable[[bytes | None], None]) -> None:
        """Forward `query` (an in-flight slot is taken and released here); `done` is called once,
        with the upstream's reply carrying the client's id, or None when every upstream failed."""
        end = wire.question_end(query)
        if end is None:
            # No plain question to match replies against: refuse rather than accept any reply.
            self.release()
            done(None)
            return
        fwd = _UdpForward(query, query[12:end].lower(), done)
        self._udp.add(fwd)
        self._send_next(fwd)

    def _new_id(self) -> bytes:
        # secrets in batches: one getrandom() per 2,048 ids instead of one per query.
        if not self._ids:
            self._ids = secrets.token_bytes(4096)
        qid, self._ids = self._ids[:2], self._ids[2:]
        return qid

    def _send_next(self, fwd: _UdpForward) -> None:
        loop = asyncio.get_running_loop()
        if self._epoll is None:
            self._epoll = select.epoll()
            loop.add_reader(self._epoll.fileno(), self._on_events)
        while fwd.next_upstream < len(self.upstreams):
            upstream = self.upstreams[fwd.next_upstream]
            fwd.next_upstream += 1
            sock = socket.socket(socket.AF_INET6 if upstream.family_v6 else socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.connect((upstream.host, upstream.port))  # binds a fresh random port
                fwd.qid = self._new_id()
                sock.send(fwd.qid + fwd.query[2:])
                self._epoll.register(sock.fileno(), select.EPOLLIN)
            except OSError:
                sock.close()
                self.counters.upstream_failures += 1
                continue
            fwd.sock = sock
            fwd.attempt += 1
            self._by_fd[sock.fileno()] = fwd
            deadline = loop.time() + self.timeout
            self._deadlines.append((deadline, fwd, fwd.attempt))
            if self._timer is None:
                self._timer = loop.call_at(deadline, self._expire)
            return
        self._finish(fwd, None)

    def _on_events(self) -> None:
        if self._epoll is None:
            return
        for fd, _ in self._epoll.poll(0):
            fwd = self._by_fd.get(fd)
            if fwd is not None:
                self._read(fwd)

    def _read(self, fwd: _UdpForward) -> None:
        sock = fwd.sock
        if sock is None:
            return
        for _ in range(16):
            try:
                data = sock.recv(UDP_READ)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # ICMP unreachable (ConnectionRefusedError) or another error: this upstream is out.
                self.counters.upstream_failures += 1
                self._drop_socket(fwd)
                self._send_next(fwd)
                return
            if reply_matches(fwd.question, fwd.qid, data):
                self._drop_socket(fwd)
                self._finish(fwd, fwd.query[:2] + data[2:])
                return
            self.counters.forward_replies_dropped += 1

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, fwd, attempt = deadlines.popleft()
            if fwd.attempt == attempt and fwd.sock is not None:
                self.counters.upstream_failures += 1
                self._drop_socket(fwd)
                self._send_next(fwd)
        self._timer = loop.call_at(deadlines[0][0], self._expire) if deadlines else None

    def _drop_socket(self, fwd: _UdpForward) -> None:
        sock = fwd.sock
        if sock is not None:
            # Closing the only descriptor also takes it out of the epoll set.
            self._by_fd.pop(sock.fileno(), None)
            sock.close()
            fwd.sock = None

    def _finish(self, fwd: _UdpForward, reply: bytes | None) -> None:
        done = fwd.done
        if done is not None:
            fwd.done = None
            fwd.query = fwd.question = b""  # its deadline entry may outlive it: keep that small
            self._udp.discard(fwd)
            self.release()
            done(reply)

    # ---- TCP -------------------------------------------------------------------------------
    async def forward_tcp(self, query: bytes) -> bytes | None:
        """The upstream's reply over TCP, or None; the caller holds an in-flight slot."""
        end = wire.question_end(query)
        if end is None:
            return None
        question = query[12:end].lower()
        for upstream in self.upstreams:
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(upstream.host, upstream.port), self.timeout
                )
                writer.write(struct.pack(">H", len(query)) + query)
                await asyncio.wait_for(writer.drain(), self.timeout)
                size = struct.unpack(">H", await asyncio.wait_for(reader.readexactly(2), self.timeout))[0]
                reply = await asyncio.wait_for(reader.readexactly(size), self.timeout)
                if reply_matches(question, query[:2], reply):
                    return reply
                self.counters.forward_replies_dropped += 1
                self.counters.upstream_failures += 1
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                self.counters.upstream_failures += 1
            finally:
                if writer is not None:
                    writer.close()
        return None

    def close(self) -> None:
        for fwd in list(self._udp):
            self._drop_socket(fwd)
        self._udp.clear()
        if self._timer is not None:
            self._timer.cancel()
        if self._epoll is not None:
            asyncio.get_running_loop().remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None
