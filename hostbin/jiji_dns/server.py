"""asyncio edges: UDP and TCP listeners around the responder, plus the stats socket."""

from __future__ import annotations

import asyncio
import errno
import inspect
import ipaddress
import json
import os
import resource
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from .config import Config, Endpoint
from .events import RCODE_NAMES, Counters, log, log_limited
from .forwarder import Forwarder
from .metrics import WorkerMetrics
from .responder import FORWARD, Responder
from .udpsize import fit_udp
from .wire import PLAIN_UDP_LIMIT


class BindError(Exception):
    """A listen address could not be bound; the message says why and what to do."""


def bind_udp(ep: Endpoint, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ep.family_v6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    _bind(sock, ep, "udp")
    sock.setblocking(False)
    return sock


def bind_tcp(ep: Endpoint, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ep.family_v6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    _bind(sock, ep, "tcp")
    # The kernel caps this at net.core.somaxconn; a short queue drops connects under bursts.
    sock.listen(socket.SOMAXCONN)
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


@dataclass(frozen=True)
class Listeners:
    """One worker's bound sockets: a UDP and a TCP socket per listen address."""

    udp: tuple[socket.socket, ...]
    tcp: tuple[socket.socket, ...]

    def close(self) -> None:
        for sock in self.udp + self.tcp:
            sock.close()


def bind_all(endpoints: tuple[Endpoint, ...], reuse_port: bool = False) -> Listeners:
    udp: list[socket.socket] = []
    tcp: list[socket.socket] = []
    try:
        for ep in endpoints:
            udp.append(bind_udp(ep, reuse_port))
            tcp.append(bind_tcp(ep, reuse_port))
    except BindError:
        Listeners(tuple(udp), tuple(tcp)).close()
        raise
    return Listeners(tuple(udp), tuple(tcp))


def probe_free(endpoints: tuple[Endpoint, ...]) -> None:
    """Bind each address once without SO_REUSEPORT and let go: raises BindError when anything
    holds it, even a process that set SO_REUSEPORT itself (which our workers' binds would join)."""
    bind_all(endpoints).close()


# TCP per connection (RFC 7766 6.2.3 asks servers to bound these): a query must arrive within
# the idle timeout, a reply must leave within the write timeout, and at most this much reply
# data may wait for a client that does not read before we stop reading its queries.
TCP_IDLE_TIMEOUT = 10.0
TCP_WRITE_TIMEOUT = 5.0
TCP_WRITE_BUFFER = 16384
TCP_KERNEL_SNDBUF = 65536
# File descriptors kept free for everything else: Corrosion streams, the stats socket, logs.
FD_RESERVE = 64


@dataclass(frozen=True)
class Limits:
    tcp_connections: int
    inflight: int


def fd_limits(max_tcp: int, max_inflight: int) -> Limits:
    """TCP connection and in-flight forward bounds that fit the open-file limit (raised to its
    hard limit first): every connection holds one descriptor and every forward at most one (UDP
    forwards that overlap share a socket), so accept() can never fail with EMFILE while we are
    below both bounds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    budget = max(soft - FD_RESERVE, 2) if soft != resource.RLIM_INFINITY else max_tcp + max_inflight
    tcp = max(1, min(max_tcp, budget // 2))
    inflight = max(1, min(max_inflight, budget - tcp))
    return Limits(tcp, inflight)


class DNSServer:
    def __init__(
        self,
        config: Config,
        responder: Responder,
        forwarder: Forwarder,
        counters: Counters,
        tcp_limit: int,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.responder = responder
        self.forwarder = forwarder
        self.counters = counters
        self.tcp_limit = tcp_limit
        self.rcodes = [0] * 16
        self._recursion: dict[str, bool] = {}
        self._udp: list[socket.socket] = []
        self._tcp: list[socket.socket] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tcp_open = 0

    @property
    def tcp_connections(self) -> int:
        return self._tcp_open

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

    def start(self, listeners: Listeners) -> None:
        loop = asyncio.get_running_loop()
        on_udp = self._on_udp if self.metrics is None else self._on_udp_measured
        for sock in listeners.udp:
            loop.add_reader(sock.fileno(), on_udp, sock)
            self._udp.append(sock)
        for sock in listeners.tcp:
            loop.add_reader(sock.fileno(), self._on_accept, sock)
            self._tcp.append(sock)
        log("listening", addresses=",".join(str(ep) for ep in self.config.listen), proto="udp+tcp")

    def _contained(self, data: bytes, recursion: bool, error: Exception) -> bytes | None:
        """The reply to a packet whose handling raised: SERVFAIL, and one log line per interval."""
        self.counters.packets_failed += 1
        log_limited("packet_error", error=f"{type(error).__name__}: {error}"[:300], packet=data[:64].hex())
        try:
            return self.responder.servfail(data, recursion)
        except Exception:
            return None

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
                try:
                    reply = answer(data, recursion)
                    # Only UDP has a size limit; TCP sends the same reply whole.
                    if type(reply) is bytes and len(reply) > PLAIN_UDP_LIMIT:
                        reply = fit_udp(data, reply)
                except Exception as e:  # one bad packet must cost one SERVFAIL, not the loop
                    reply = self._contained(data, recursion, e)
                if reply.__class__ is bytes:
                    rcodes[reply[3] & 15] += 1  # type: ignore[index]
                    try:
                        sendto(reply, addr)  # type: ignore[arg-type]
                    except OSError:
                        pass
                elif reply is FORWARD:
                    self._forward_udp(sock, data, addr, recursion)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            log_limited("udp_error", error=str(e))
        finally:
            self.counters.queries_udp += received

    def _on_udp_measured(self, sock: socket.socket) -> None:
        """_on_udp with metrics on (a copy, so that with them off the hot loop has not one
        instruction more): each query's type, and the time the loop took per query, two clock
        reads a batch (up to 64 queries read at once): a query answered here is counted with its
        batch's mean. A clock read and a bucket for every query cost 6% of a `.jiji` answer."""
        assert self.metrics is not None
        answer = self.responder.answer
        rcodes = self.rcodes
        allowed = self._recursion
        recvfrom, sendto = sock.recvfrom, sock.sendto
        types, type_of = self.metrics.types, self.metrics.type_of
        received = answered = 0
        started = perf_counter()
        try:
            for _ in range(64):
                data, addr = recvfrom(4096)
                received += 1
                # The common shape, no additional record: the type is in place near the end; any
                # other shape looks for the end of the name.
                if data[-4] == 0 and data[11] == 0 and len(data) > 16:
                    types[data[-3]] += 1
                else:
                    types[type_of(data)] += 1
                recursion = allowed.get(addr[0])
                if recursion is None:
                    recursion = self.recursion_allowed(addr[0])
                try:
                    reply = answer(data, recursion)
                    if type(reply) is bytes and len(reply) > PLAIN_UDP_LIMIT:
                        reply = fit_udp(data, reply)
                except Exception as e:  # one bad packet must cost one SERVFAIL, not the loop
                    reply = self._contained(data, recursion, e)
                if reply.__class__ is bytes:
                    rcodes[reply[3] & 15] += 1  # type: ignore[index]
                    answered += 1
                    try:
                        sendto(reply, addr)  # type: ignore[arg-type]
                    except OSError:
                        pass
                elif reply is FORWARD:
                    self._forward_udp(sock, data, addr, recursion)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            log_limited("udp_error", error=str(e))
        finally:
            self.counters.queries_udp += received
            if answered:
                self.metrics.request.observe_many((perf_counter() - started) / received, answered)

    def _forward_udp(self, sock: socket.socket, data: bytes, addr: Any, recursion: bool) -> None:
        def done(reply: bytes | None) -> None:
            if reply is None:
                reply = self.responder.servfail(data, recursion)
                if reply is None:
                    return
            self.rcodes[reply[3] & 15] += 1
            try:
                sock.sendto(reply, addr)
            except OSError:
                pass

        if self.forwarder.acquire():
            self.forwarder.forward_udp(data, done)
        else:
            done(None)

    # ---- TCP ---------------------------------------------------------------------------------
    def _on_accept(self, listener: socket.socket) -> None:
        for _ in range(64):
            try:
                conn, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # Out of descriptors or buffers (should not happen below our limits): pause
                # accepting briefly rather than spin, and say so once per interval.
                log_limited("tcp_accept_error", error=str(e))
                loop = asyncio.get_running_loop()
                loop.remove_reader(listener.fileno())
                loop.call_later(0.1, self._resume_accept, listener)
                return
            if self._tcp_open >= self.tcp_limit:
                self.counters.tcp_refused_busy += 1
                log_limited("tcp_connection_limit", limit=self.tcp_limit)
                conn.close()
                continue
            self._tcp_open += 1
            self._spawn(self._serve_tcp(conn, addr))

    def _resume_accept(self, listener: socket.socket) -> None:
        if listener in self._tcp:
            asyncio.get_running_loop().add_reader(listener.fileno(), self._on_accept, listener)

    async def _serve_tcp(self, conn: socket.socket, peer: Any) -> None:
        writer = None
        try:
            conn.setblocking(False)
            # A fixed kernel send buffer (no autotuning to megabytes): a client that never reads
            # fills it and then our write timeout, instead of parking MBs of replies per socket.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, TCP_KERNEL_SNDBUF)
            reader, writer = await asyncio.open_connection(sock=conn)
            writer.transport.set_write_buffer_limits(high=TCP_WRITE_BUFFER)
            recursion = self.recursion_allowed(peer[0]) if peer else False
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                data = await asyncio.wait_for(reader.readexactly(head[0] << 8 | head[1]), TCP_IDLE_TIMEOUT)
                self.counters.queries_tcp += 1
                if self.metrics is not None:
                    self.metrics.count_type(data)
                reply = await self._tcp_reply(data, recursion)
                if reply is None:
                    break
                self.rcodes[reply[3] & 15] += 1
                writer.write(len(reply).to_bytes(2, "big") + reply)
                try:
                    await asyncio.wait_for(writer.drain(), TCP_WRITE_TIMEOUT)
                except TimeoutError:
                    # A client that sends and never reads (pipelining into a full window).
                    self.counters.tcp_dropped_slow += 1
                    writer.transport.abort()
                    break
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except Exception as e:
            self.counters.packets_failed += 1
            log_limited("tcp_error", error=f"{type(e).__name__}: {e}"[:300])
        finally:
            self._tcp_open -= 1
            if writer is not None:
                writer.close()
            else:
                conn.close()

    async def _tcp_reply(self, data: bytes, recursion: bool) -> bytes | None:
        try:
            reply = self.responder.answer(data, recursion)
            if reply is FORWARD:
                reply = None
                if self.forwarder.acquire():
                    try:
                        reply = await self.forwarder.forward_tcp(data)
                    finally:
                        self.forwarder.release()
                if reply is None:
                    reply = self.responder.servfail(data, recursion)
        except Exception as e:
            reply = self._contained(data, recursion, e)
        if isinstance(reply, bytes) and len(reply) > 65535:
            reply = self.responder.servfail(data, recursion)  # cannot be framed: 2-byte length
        return reply if isinstance(reply, bytes) else None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def answers_by_rcode(self) -> dict[str, int]:
        return {RCODE_NAMES.get(i, str(i)): n for i, n in enumerate(self.rcodes) if n}

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._udp + self._tcp:
            loop.remove_reader(sock.fileno())
            sock.close()
        self._udp, self._tcp = [], []
        for task in list(self._tasks):
            task.cancel()


async def serve_stats(
    path: str, snapshot: Callable[[], dict[str, Any] | Awaitable[dict[str, Any]]]
) -> asyncio.base_events.Server:
    """A Unix socket that writes the counters as one JSON document to whoever connects."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            result = snapshot()
            document = await result if inspect.isawaitable(result) else result
            writer.write(json.dumps(document, sort_keys=True).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), 5)
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(handle, path=path)
    os.chmod(path, 0o600)
    return server
