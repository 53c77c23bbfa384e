"""A minimal HTTP/1.1 client for Corrosion's streaming NDJSON responses (asyncio streams).

The standard library has no asyncio HTTP client, and the daemon must run with only python3 on
the server; this reads the status, the headers and a chunked, length-delimited or close-delimited
body as lines. Reading is linear in the bytes received and bounded: a line (an NDJSON event) may
be at most `max_line` bytes, so a node that sends a huge line, or a body without end, costs a
bounded buffer, never the whole stream held in memory.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

# A subscription event is one row (well under 2 KiB with the table's cell caps); 1 MiB leaves room
# for a long error message without letting a broken node grow our memory.
MAX_LINE = 1 << 20
# Status line, each header line, each chunk-size line.
MAX_HEAD_LINE = 8192
MAX_HEADERS = 100
READ_SIZE = 65536


class HTTPError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status


class BadStream(Exception):
    """The node sent something that is not HTTP as we read it: the stream is refused."""


class LineTooLong(BadStream):
    """A body line (or a header) longer than the limit: the stream is refused."""


# What a broken, cut or refused stream raises; callers reconnect after these and only these.
# Anything else (a TypeError, a KeyError) is a bug of ours and must end the task, not be retried.
# OSError covers ConnectionError and the socket's own errors.
STREAM_ERRORS = (TimeoutError, OSError, asyncio.IncompleteReadError, HTTPError, BadStream)


def _hex_size(line: bytes) -> int:
    try:
        return int(line.split(b";")[0].strip() or b"0", 16)
    except ValueError:
        raise BadStream(f"bad chunk size line {line[:50]!r}") from None


async def _head_line(reader: asyncio.StreamReader, timeout: float | None) -> bytes:
    try:
        line = await asyncio.wait_for(reader.readuntil(b"\n"), timeout)
    except asyncio.IncompleteReadError as e:
        return e.partial
    except asyncio.LimitOverrunError:
        raise LineTooLong("HTTP header line too long") from None
    if len(line) > MAX_HEAD_LINE:
        raise LineTooLong("HTTP header line too long")
    return line


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    max_line: int = MAX_LINE

    async def _chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive, whatever its framing; raises ConnectionError when a
        chunked body ends without its final chunk."""
        reader = self.reader
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await _head_line(reader, None)  # a live stream may be quiet for hours
                if not size_line:
                    raise ConnectionError("stream closed mid-chunk")
                size = _hex_size(size_line)
                if size == 0:
                    return
                while size:
                    data = await reader.read(min(size, READ_SIZE))
                    if not data:
                        raise ConnectionError("stream closed mid-chunk")
                    size -= len(data)
                    yield data
                await reader.readexactly(2)
        length_text = self.headers.get("content-length")
        if length_text is not None:
            if not (length_text.isascii() and length_text.isdigit()):
                raise BadStream(f"bad Content-Length {length_text[:50]!r}")
            remaining = int(length_text)
            while remaining > 0:
                data = await reader.read(min(remaining, READ_SIZE))
                if not data:
                    raise asyncio.IncompleteReadError(b"", remaining)
                remaining -= len(data)
                yield data
            return
        while data := await reader.read(READ_SIZE):
            yield data

    async def lines(self) -> AsyncIterator[bytes]:
        """Non-blank body lines. Each received byte is scanned once for a newline (linear time),
        and a line longer than `max_line` raises LineTooLong before it is buffered further."""
        buffer = bytearray()
        try:
            async for data in self._chunks():
                start = 0
                end = data.find(b"\n")
                while end >= 0:
                    if buffer:
                        buffer += data[start:end]
                        line = bytes(buffer)
                        buffer.clear()
                    else:
                        line = data[start:end]
                    if len(line) > self.max_line:
                        raise LineTooLong(f"a body line is longer than {self.max_line} bytes")
                    if line.strip():
                        yield line
                    start = end + 1
                    end = data.find(b"\n", start)
                buffer += data[start:]
                if len(buffer) > self.max_line:
                    raise LineTooLong(f"a body line is longer than {self.max_line} bytes")
        except ConnectionError:
            # Closed without the final chunk: still hand over a last complete event (an error
            # event may come without its newline), then report the disconnect.
            if buffer.strip():
                yield bytes(buffer)
            raise
        if buffer.strip():
            yield bytes(buffer)

    async def text(self) -> str:
        """The body as text, for error messages: at most the first lines up to one `max_line`."""
        out: list[bytes] = []
        size = 0
        async for line in self.lines():
            out.append(line)
            size += len(line)
            if size > self.max_line:
                break
        return b"\n".join(out).decode(errors="replace")

    def close(self) -> None:
        self.writer.close()


async def request(host: str, port: int, method: str, path: str, body: Any = None, timeout: float = 10) -> Response:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        payload = b"" if body is None else json.dumps(body).encode()
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nAccept: application/x-ndjson, application/json\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        writer.write(head.encode() + payload)
        await asyncio.wait_for(writer.drain(), timeout)
        status_line = await _head_line(reader, timeout)
        parts = status_line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise ConnectionError(f"bad HTTP status line {status_line[:200]!r}")
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            line = await _head_line(reader, timeout)
            if line in (b"\r\n", b"\n", b""):
                break
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        else:
            raise LineTooLong(f"more than {MAX_HEADERS} HTTP headers")
    except BaseException:
        writer.close()
        raise
    return Response(int(parts[1]), headers, reader, writer)
