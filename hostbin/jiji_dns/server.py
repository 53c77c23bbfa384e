"""asyncio edges: UDP and TCP listeners around the responder, plus the stats socket."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from .config import Config, Endpoint
from .events import RCODE_NAMES, Counters, log
from .forwarder import Forwarder
from .responder import FORWARD, Responder


class BindError(Exception):
    """A listen address could not be bound; the message says why and what to do."""


def bind_udp(ep: Endpoint) -> socket.socket:
    family = socket.AF_INET6 if ep.family_v6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    _bind(sock, ep, "udp")
    sock.setblocking(False)
    return sock


def bind_tcp(ep: Endpoint) -> socket.socket:
    family = socket.AF_INET6 if ep.family_v6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    _bind(sock, ep, "tcp")
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _bind(sock: socket.socket, ep: Endpoint, proto: str) -> None:
    try:
        sock.bind((ep.host, ep.port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            hint = f"stop whatever holds it (ss -lpn sport = :{ep.port})"
            if ep.port == 53:
                hint += "; on port 53 this is often systemd-resolved (DNSStubListener) or dnsmasq"
            raise BindError(f"{proto} port {ep.port} on {ep.host} is already in use: {hint}") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise BindError(
                f"{ep.host} is not an address of this host ({proto}): is the interface that carries it (jiji0 or the bridge) up?"
            ) from None
        if e.errno == errno.EACCES:
            raise BindError(f"no permission to bind {proto} {ep}: run as root or grant CAP_NET_BIND_SERVICE") from None
        raise BindError(f"cannot bind {proto} {ep}: {e.strerror}") from None


class DNSServer:
    def __init__(self, config: Config, responder: Responder, forwarder: Forwarder, counters: Counters) -> None:
        self.config = config
        self.responder = responder
        self.forwarder = forwarder
        self.counters = counters
        self.rcodes = [0] * 16
        self._recursion: dict[str, bool] = {}
        self._udp: list[socket.socket] = []
        self._tcp_servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def recursion_allowed(self, host: str) -> bool:
        allowed = self._recursion.get(host)
        if allowed is None:
            addr = ipaddress.ip_address(host.split("%")[0])
            if addr.version == 6 and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            allowed = any(addr in net for net in self.config.recursion_networks)
            if len(self._recursion) > 65536:
                self._recursion.clear()
            self._recursion[host] = allowed
        return allowed

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        udp = [bind_udp(ep) for ep in self.config.listen]
        tcp = [bind_tcp(ep) for ep in self.config.listen]
        for sock in udp:
            loop.add_reader(sock.fileno(), self._on_udp, sock)
            self._udp.append(sock)
        for sock in tcp:
            self._tcp_servers.append(await asyncio.start_server(self._on_tcp, sock=sock))
        log("listening", addresses=",".join(str(ep) for ep in self.config.listen), proto="udp+tcp")

    def _on_udp(self, sock: socket.socket) -> None:
        # The hot loop: locals only, no per-packet allocation beyond the reply bytes.
        answer = self.responder.answer
        rcodes = self.rcodes
        allowed = self._recursion
        recvfrom, sendto = sock.recvfrom, sock.sendto
        received = 0
        try:
            for _ in range(64):
                data, addr = recvfrom(4096)
                received += 1
                recursion = allowed.get(addr[0])
                if recursion is None:
                    recursion = self.recursion_allowed(addr[0])
                reply = answer(data, recursion, True)
                if reply.__class__ is bytes:
                    rcodes[reply[3] & 15] += 1  # type: ignore[index]
                    try:
                        sendto(reply, addr)  # type: ignore[arg-type]
                    except OSError:
                        pass
                elif reply is FORWARD:
                    self._spawn(self._forward_udp(sock, data, addr))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            log("udp_error", error=str(e))
        finally:
            self.counters.queries_udp += received

    async def _forward_udp(self, sock: socket.socket, data: bytes, addr: Any) -> None:
        reply = await self.forwarder.forward_udp(data)
        if reply is None:
            reply = self.responder.servfail(data, True)
            if reply is None:
                return
        self.rcodes[reply[3] & 15] += 1
        try:
            sock.sendto(reply, addr)
        except OSError:
            pass

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        recursion = self.recursion_allowed(peer[0]) if peer else False
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), 10)
                data = await asyncio.wait_for(reader.readexactly(struct.unpack(">H", head)[0]), 10)
                self.counters.queries_tcp += 1
                reply = self.responder.answer(data, recursion, False)
                if reply is FORWARD:
                    reply = await self.forwarder.forward_tcp(data) or self.responder.servfail(data, True)
                if reply is None:
                    break
                assert isinstance(reply, bytes)
                self.rcodes[reply[3] & 15] += 1
                writer.write(struct.pack(">H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def answers_by_rcode(self) -> dict[str, int]:
        return {RCODE_NAMES.get(i, str(i)): n for i, n in enumerate(self.rcodes) if n}

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._udp:
            loop.remove_reader(sock.fileno())
            sock.close()
        for srv in self._tcp_servers:
            srv.close()
        for task in list(self._tasks):
            task.cancel()


async def serve_stats(path: str, snapshot: Callable[[], dict[str, Any]]) -> asyncio.base_events.Server:
    """A Unix socket that writes the counters as one JSON document to whoever connects."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(json.dumps(snapshot(), sort_keys=True).encode() + b"\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(handle, path=path)
    os.chmod(path, 0o600)
    return server
