"""A small client of the local Corrosion node's HTTP API (loopback only), standard library only."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

Statement = str | tuple[str, list[Any]]


class CorrosionError(RuntimeError):
    pass


class Corrosion:
    def __init__(self, api: str = "127.0.0.1:9220", timeout: float = 10) -> None:
        self.base = f"http://{api}"
        self.timeout = timeout

    def _post(self, path: str, body: Any) -> bytes:
        request = urllib.request.Request(
            self.base + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as e:
            raise CorrosionError(f"{path}: HTTP {e.code}: {e.read().decode(errors='replace').strip()}") from None
        except OSError as e:
            raise CorrosionError(f"Corrosion API at {self.base} unreachable: {e}") from None

    def query(self, sql: str, params: list[Any] | None = None) -> tuple[list[str], list[list[Any]]]:
        """Columns and rows of one read statement."""
        body: Any = [sql, params] if params else sql
        columns: list[str] = []
        rows: list[list[Any]] = []
        for line in self._post("/v1/queries", body).splitlines():
            if not line.strip():
                continue
            event = json.loads(line)
            if "error" in event:
                raise CorrosionError(str(event["error"]))
            if "columns" in event:
                columns = event["columns"]
            elif "row" in event:
                rows.append(event["row"][1])
        return columns, rows

    def execute(self, statements: list[Statement]) -> list[dict[str, Any]]:
        """Runs statements in one transaction; all or nothing."""
        body = [s if isinstance(s, str) else [s[0], s[1]] for s in statements]
        response = json.loads(self._post("/v1/transactions", body))
        results: list[dict[str, Any]] = response.get("results", [])
        for r in results:
            if "error" in r:
                raise CorrosionError(str(r["error"]))
        return results

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.query("SELECT 1")
                return
            except CorrosionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
