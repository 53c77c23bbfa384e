"""A minimal HTTP/1.1 client for Corrosion's streaming NDJSON responses (asyncio streams).

The standard library has no asyncio HTTP client, and the daemon must run with only python3 on
the server; this reads the status, the headers and a chunked or length-delimited body as lines.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


class HTTPError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status


# What a broken or refused stream raises; callers reconnect after any of these.
STREAM_ERRORS = (TimeoutError, OSError, ConnectionError, asyncio.IncompleteReadError, HTTPError, ValueError, KeyError)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def lines(self) -> AsyncIterator[bytes]:
        """Body lines, decoding chunked transfer encoding when used."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            buffer = b""
            while True:
                size_line = await self.reader.readline()
                if not size_line:
                    # Closed without the final chunk: still hand over a last complete event
                    # (an error event may come without its newline).
                    if buffer.strip():
                        yield buffer
                    raise ConnectionError("stream closed mid-chunk")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    break
                buffer += await self.reader.readexactly(size)
                await self.reader.readexactly(2)
                *complete, buffer = buffer.split(b"\n")
                for line in complete:
                    if line.strip():
                        yield line
            if buffer.strip():
                yield buffer
        else:
            length = self.headers.get("content-length")
            body = await (self.reader.readexactly(int(length)) if length else self.reader.read())
            for line in body.split(b"\n"):
                if line.strip():
                    yield line

    async def text(self) -> str:
        return b"\n".join([line async for line in self.lines()]).decode(errors="replace")

    def close(self) -> None:
        self.writer.close()


async def request(host: str, port: int, method: str, path: str, body: Any = None, timeout: float = 10) -> Response:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    payload = b"" if body is None else json.dumps(body).encode()
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nAccept: application/x-ndjson, application/json\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    writer.write(head.encode() + payload)
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout)
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        writer.close()
        raise ConnectionError(f"bad HTTP status line {status_line!r}")
    headers: dict[str, str] = {}
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if line in (b"\r\n", b"\n", b""):
            break
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    return Response(int(parts[1]), headers, reader, writer)
