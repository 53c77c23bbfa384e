"""The HTTP stream reader is linear and bounded, on a real loopback connection."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable

import pytest
from jiji_dns import httpstream

MB = 1 << 20


def serve_once(send: Callable[[socket.socket], None]) -> tuple[int, threading.Thread]:
    """A one-connection HTTP server in a thread: reads the request head, then runs `send`."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def run() -> None:
        conn, _ = listener.accept()
        listener.close()
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            send(conn)
        except OSError:
            pass  # the client hung up on purpose
        finally:
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


def chunked_without_newline(total: int) -> Callable[[socket.socket], None]:
    def send(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        piece = b"x" * 65536
        chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        for _ in range(total // len(piece)):
            conn.sendall(chunk)
        conn.sendall(b"1\r\n\n\r\n0\r\n\r\n")

    return send


async def read_all(port: int, max_line: int) -> tuple[list[int], float]:
    """Lengths of the lines read, and the reading thread's CPU seconds."""
    started = time.thread_time()
    resp = await httpstream.request("127.0.0.1", port, "GET", "/")
    resp.max_line = max_line
    try:
        lengths = [len(line) async for line in resp.lines()]
    finally:
        resp.close()
    return lengths, time.thread_time() - started


def cpu_of(size: int, max_line: int) -> float:
    """The least reading CPU of three reads of one `size`-byte line (refused or not): the
    least, as the noise of a busy machine only adds."""
    best = float("inf")
    for _ in range(3):
        port, thread = serve_once(chunked_without_newline(size))
        started = time.thread_time()
        try:
            lengths, _ = asyncio.run(read_all(port, max_line))
            assert lengths == [size]
        except httpstream.LineTooLong:
            assert size > max_line
        best = min(best, time.thread_time() - started)
        thread.join(10)
    return best


# CPU seconds depend on the machine; their ratio between two sizes in one run does not.
# bench/dns_hostile.py has no part for this: the ratios say all (50 MB reads in ~0.15 s here).


def test_a_50_mb_line_is_refused_at_the_line_limit_cheaply() -> None:
    # Refused once the line passes MAX_LINE (1 MiB): a 50 MB line costs what a 5 MB one does,
    # where reading it through would cost ten times as much.
    with pytest.raises(httpstream.LineTooLong):
        port, thread = serve_once(chunked_without_newline(50 * MB))
        asyncio.run(read_all(port, httpstream.MAX_LINE))
    thread.join(10)
    ratio = cpu_of(50 * MB, httpstream.MAX_LINE) / cpu_of(5 * MB, httpstream.MAX_LINE)
    assert ratio < 3, f"refusing a 50 MB line cost {ratio:.1f}x refusing a 5 MB one"


def test_reading_a_50_mb_line_is_linear() -> None:
    # With the limit lifted above the line, the reader still scans each byte once: 5x the bytes
    # cost ~5x the CPU, where the old `buffer += data; buffer.split(b"\n")` cost ~25x (25 s of
    # CPU for 50 MB).
    ratio = cpu_of(50 * MB, 64 * MB) / cpu_of(10 * MB, 64 * MB)
    assert ratio < 12, f"a 50 MB line cost {ratio:.1f}x a 10 MB one"


def test_a_body_without_length_or_chunks_is_streamed_not_buffered() -> None:
    first_line_seen = threading.Event()

    seen_before_the_rest: list[bool] = []

    def send(conn: socket.socket) -> None:
        conn.sendall(b'HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\r\n{"eoq": {}}\n')
        # The rest only once the client has handed over the first line: a reader that buffers
        # the whole body before yielding would not hand it over before this wait gives up.
        seen_before_the_rest.append(first_line_seen.wait(10))
        conn.sendall(b'{"row": [1, []]}\n' * 1000)

    port, thread = serve_once(send)

    async def main() -> list[bytes]:
        resp = await httpstream.request("127.0.0.1", port, "GET", "/")
        out = []
        try:
            async for line in resp.lines():
                out.append(line)
                first_line_seen.set()
        finally:
            resp.close()
        return out

    lines = asyncio.run(main())
    assert seen_before_the_rest == [True], "the first line was handed over only with the rest of the body"
    assert lines[0] == b'{"eoq": {}}' and len(lines) == 1001


def test_lines_split_across_chunks_and_reads_come_out_whole() -> None:
    events = b"".join(b'{"row": [%d, ["a"]]}\n' % i for i in range(5000))

    def send(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for k in range(0, len(events), 7):  # chunk boundaries fall inside lines
            piece = events[k : k + 7]
            conn.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        conn.sendall(b"0\r\n\r\n")

    port, thread = serve_once(send)

    async def main() -> list[bytes]:
        resp = await httpstream.request("127.0.0.1", port, "GET", "/")
        try:
            return [line async for line in resp.lines()]
        finally:
            resp.close()

    assert asyncio.run(main()) == events.rstrip(b"\n").split(b"\n")


def test_an_endless_header_is_refused() -> None:
    def send(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nx-long: " + b"y" * (2 * MB))

    port, thread = serve_once(send)
    with pytest.raises(httpstream.LineTooLong):
        asyncio.run(read_all(port, httpstream.MAX_LINE))
