"""Forwards names outside our domain to the upstream resolvers, in order, one timeout each.

Spoofing resistance (what an off-path attacker must guess): UDP forwards leave from sockets
connected to the upstream, so the kernel picks a random source port for each socket and drops
datagrams from any other address or port; ids come from `secrets`. A reply is accepted only
with the id of a query in flight on that socket and that query's question (compared
case-insensitively, as the upstream may normalise case), so a reply for another name is dropped
even when id and port match. A connected socket also surfaces the upstream's ICMP "port
unreachable" as ConnectionRefusedError: the next upstream is tried at once instead of after the
timeout.

A socket is shared only by forwards that overlap in time (see _Channel): a query that finds no
open socket for its upstream gets a new one, and a socket closes as soon as nothing is in flight
on it, so queries one after another each leave from a fresh port, as before. Under load a
socket carries at most CHANNEL_USES queries within CHANNEL_AGE seconds: creating, connecting
and closing a socket per query was the largest cost of a forward, and a bounded share keeps the
port short-lived (a port scan has little time to find it). Sharing does not help a spoofer aim:
each forged reply must still match one query's own random id and question.

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
import time
from collections.abc import Callable

from . import wire
from .config import Endpoint
from .events import Counters
from .metrics import WorkerMetrics

UDP_READ = 65535
# Most queries one upstream socket carries, and for how long it takes new ones after its first.
CHANNEL_USES = 32
CHANNEL_AGE = 1.0


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

    __slots__ = ("query", "question", "done", "next_upstream", "channel", "attempt", "qid", "sent")

    def __init__(self, query: bytes, question: bytes, done: Callable[[bytes | None], None]) -> None:
        self.query = query
        self.question = question
        self.done: Callable[[bytes | None], None] | None = done
        self.next_upstream = 0
        self.channel: _Channel | None = None
        self.attempt = 0
        self.qid = b""
        self.sent = 0.0


class _Channel:
    """One connected socket to one upstream and the forwards in flight on it, by id. It takes
    new forwards while it is its upstream's open channel (fewer than CHANNEL_USES sent, younger
    than CHANNEL_AGE) and is closed when its last forward is answered, fails or times out."""

    __slots__ = ("sock", "upstream", "pending", "uses", "expires")

    def __init__(self, sock: socket.socket, upstream: int, expires: float) -> None:
        self.sock = sock
        self.upstream = upstream
        self.pending: dict[bytes, _UdpForward] = {}
        self.uses = 0
        self.expires = expires


class Forwarder:
    """Cost per UDP forward is kept to plain syscalls: the sockets sit in an epoll set of our
    own (one reader for the event loop, not a selector registration per socket), and since every
    attempt has the same timeout the deadlines form a FIFO queue checked by one timer."""

    def __init__(
        self,
        upstreams: tuple[Endpoint, ...],
        timeout: float,
        max_inflight: int,
        counters: Counters,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.upstreams = upstreams
        self.timeout = timeout
        self.max_inflight = max_inflight
        self.counters = counters
        self.metrics = metrics
        self.inflight = 0
        self._epoll: select.epoll | None = None
        self._by_fd: dict[int, _Channel] = {}
        # Per upstream, the channel new forwards go to (None: the next forward opens one).
        self._open: list[_Channel | None] = [None] * len(upstreams)
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

    @property
    def sockets(self) -> int:
        """Upstream UDP sockets open now (for tests and the stats)."""
        return len(self._by_fd)

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
        self._send_next(_UdpForward(query, query[12:end].lower(), done))

    def _new_id(self, taken: dict[bytes, _UdpForward]) -> bytes:
        # secrets in batches: one getrandom() per 2,048 ids instead of one per query.
        while True:
            if not self._ids:
                self._ids = secrets.token_bytes(4096)
            qid, self._ids = self._ids[:2], self._ids[2:]
            if qid not in taken:
                return qid

    def _channel(self, index: int, now: float) -> _Channel | None:
        """The open channel to upstream `index`, a new one when there is none; None when no
        socket can be made."""
        channel = self._open[index]
        if channel is not None:
            return channel
        upstream = self.upstreams[index]
        sock = socket.socket(socket.AF_INET6 if upstream.family_v6 else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((upstream.host, upstream.port))  # binds a fresh random port
            if self._epoll is None:
                self._epoll = select.epoll()
                asyncio.get_running_loop().add_reader(self._epoll.fileno(), self._on_events)
            self._epoll.register(sock.fileno(), select.EPOLLIN)
        except OSError:
            sock.close()
            return None
        channel = self._open[index] = _Channel(sock, index, now + CHANNEL_AGE)
        self._by_fd[sock.fileno()] = channel
        return channel

    def _send_next(self, fwd: _UdpForward) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        while fwd.next_upstream < len(self.upstreams):
            index = fwd.next_upstream
            fwd.next_upstream += 1
            channel = self._channel(index, now)
            if channel is None:
                self._failed(index, "error")
                continue
            qid = self._new_id(channel.pending)
            try:
                channel.sock.send(qid + fwd.query[2:])
            except OSError:
                # A refused send (a pending ICMP error) condemns the socket for all its forwards.
                self._failed(index, "error")
                self._fail(channel)
                continue
            fwd.qid = qid
            fwd.channel = channel
            fwd.attempt += 1
            fwd.sent = now
            channel.pending[qid] = fwd
            channel.uses += 1
            if channel.uses >= CHANNEL_USES or now >= channel.expires:
                self._open[index] = None
            deadline = now + self.timeout
            self._deadlines.append((deadline, fwd, fwd.attempt))
            if self._timer is None:
                self._timer = loop.call_at(deadline, self._expire)
            return
        self._finish(fwd, None)

    def _on_events(self) -> None:
        if self._epoll is None:
            return
        by_fd = self._by_fd
        for fd, _ in self._epoll.poll(0):
            channel = by_fd.get(fd)
            if channel is not None:
                self._read(channel)

    def _read(self, channel: _Channel) -> None:
        recv = channel.sock.recv
        pending = channel.pending
        for _ in range(64):
            try:
                data = recv(UDP_READ)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # ICMP unreachable (ConnectionRefusedError) or another error: this upstream is
                # out for every forward waiting on this socket.
                self._fail(channel)
                return
            fwd = pending.get(data[:2])
            if fwd is not None and reply_matches(fwd.question, fwd.qid, data):
                del pending[fwd.qid]
                fwd.channel = None
                if self.metrics is not None:
                    self.metrics.forward_done(channel.upstream, "answer", time.monotonic() - fwd.sent)
                self._finish(fwd, fwd.query[:2] + data[2:])
                if not pending:
                    self._close(channel)
                    return
            else:
                self.counters.forward_replies_dropped += 1

    def _fail(self, channel: _Channel) -> None:
        waiting = list(channel.pending.values())
        channel.pending.clear()
        self._close(channel)
        for fwd in waiting:
            self._failed(channel.upstream, "error")
            fwd.channel = None
            self._send_next(fwd)

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, fwd, attempt = deadlines.popleft()
            channel = fwd.channel
            if fwd.attempt == attempt and channel is not None:
                self._failed(channel.upstream, "timeout")
                del channel.pending[fwd.qid]
                fwd.channel = None
                if not channel.pending:
                    self._close(channel)
                self._send_next(fwd)
        self._timer = loop.call_at(deadlines[0][0], self._expire) if deadlines else None

    def _close(self, channel: _Channel) -> None:
        if self._open[channel.upstream] is channel:
            self._open[channel.upstream] = None
        # Closing the only descriptor also takes it out of the epoll set.
        if self._by_fd.pop(channel.sock.fileno(), None) is not None:
            channel.sock.close()

    def _finish(self, fwd: _UdpForward, reply: bytes | None) -> None:
        done = fwd.done
        if done is not None:
            fwd.done = None
            fwd.query = fwd.question = b""  # its deadline entry may outlive it: keep that small
            self.release()
            done(reply)

    # ---- TCP -------------------------------------------------------------------------------
    async def forward_tcp(self, query: bytes) -> bytes | None:
        """The upstream's reply over TCP, or None; the caller holds an in-flight slot."""
        end = wire.question_end(query)
        if end is None:
            return None
        question = query[12:end].lower()
        for index, upstream in enumerate(self.upstreams):
            writer = None
            started = time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(upstream.host, upstream.port), self.timeout
                )
                writer.write(struct.pack(">H", len(query)) + query)
                await asyncio.wait_for(writer.drain(), self.timeout)
                size = struct.unpack(">H", await asyncio.wait_for(reader.readexactly(2), self.timeout))[0]
                reply = await asyncio.wait_for(reader.readexactly(size), self.timeout)
                if reply_matches(question, query[:2], reply):
                    if self.metrics is not None:
                        self.metrics.forward_done(index, "answer", time.monotonic() - started)
                    return reply
                self.counters.forward_replies_dropped += 1
                self._failed(index, "error")
            except TimeoutError:
                self._failed(index, "timeout")
            except (OSError, asyncio.IncompleteReadError):
                self._failed(index, "error")
            finally:
                if writer is not None:
                    writer.close()
        return None

    def _failed(self, upstream: int, result: str) -> None:
        self.counters.upstream_failures += 1
        if self.metrics is not None:
            self.metrics.forward_done(upstream, result)

    def close(self) -> None:
        for channel in list(self._by_fd.values()):
            self._close(channel)
        self._deadlines.clear()
        if self._timer is not None:
            self._timer.cancel()
        if self._epoll is not None:
            asyncio.get_running_loop().remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None
