"""Forwards names outside our domain to the upstream resolvers, in order, one timeout each.

UDP queries go out over one shared non-blocking socket per address family with a fresh random
id; a reply is accepted only when both its id and its source address match a pending query.
TCP queries are forwarded over TCP. In-flight UDP forwards are bounded: past the bound the
client gets SERVFAIL at once instead of growing memory without end.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct

from .config import Endpoint
from .events import Counters


class Forwarder:
    def __init__(self, upstreams: tuple[Endpoint, ...], timeout: float, max_inflight: int, counters: Counters) -> None:
        self.upstreams = upstreams
        self.timeout = timeout
        self.max_inflight = max_inflight
        self.counters = counters
        self._socks: dict[int, socket.socket] = {}
        self._pending: dict[tuple[int, str, int], asyncio.Future[bytes]] = {}

    def _socket(self, family: int) -> socket.socket:
        sock = self._socks.get(family)
        if sock is None:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            asyncio.get_running_loop().add_reader(sock.fileno(), self._on_readable, sock)
            self._socks[family] = sock
        return sock

    def _on_readable(self, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # ICMP errors surface here; the pending query times out and moves on
            if len(data) < 12:
                continue
            fut = self._pending.get((data[0] << 8 | data[1], addr[0], addr[1]))
            if fut is not None and not fut.done():
                fut.set_result(data)

    @property
    def inflight(self) -> int:
        return len(self._pending)

    async def forward_udp(self, query: bytes) -> bytes | None:
        """The upstream reply with the client's id restored, or None when every upstream failed."""
        if len(self._pending) >= self.max_inflight:
            self.counters.forwards_dropped_busy += 1
            return None
        self.counters.forwarded += 1
        loop = asyncio.get_running_loop()
        for upstream in self.upstreams:
            family = socket.AF_INET6 if upstream.family_v6 else socket.AF_INET
            sock = self._socket(family)
            while True:
                new_id = random.getrandbits(16)
                key = (new_id, upstream.host, upstream.port)
                if key not in self._pending:
                    break
            fut: asyncio.Future[bytes] = loop.create_future()
            self._pending[key] = fut
            try:
                sock.sendto(struct.pack(">H", new_id) + query[2:], (upstream.host, upstream.port))
                reply = await asyncio.wait_for(fut, self.timeout)
                return query[:2] + reply[2:]
            except (TimeoutError, OSError):
                self.counters.upstream_failures += 1
            finally:
                self._pending.pop(key, None)
        return None

    async def forward_tcp(self, query: bytes) -> bytes | None:
        self.counters.forwarded += 1
        for upstream in self.upstreams:
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(upstream.host, upstream.port), self.timeout
                )
                writer.write(struct.pack(">H", len(query)) + query)
                await writer.drain()
                size = struct.unpack(">H", await asyncio.wait_for(reader.readexactly(2), self.timeout))[0]
                return await asyncio.wait_for(reader.readexactly(size), self.timeout)
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                self.counters.upstream_failures += 1
            finally:
                if writer is not None:
                    writer.close()
        return None

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._socks.values():
            loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()
