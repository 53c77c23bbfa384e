"""The parent of N forked workers: readiness, one stats socket for all, and all-or-nothing life.

Why fork and not threads: the fast path is pure Python, so only processes use more than one
core. Why each worker has its own subscription rather than one shared through the parent: a
worker then depends on nothing but Corrosion (no second protocol, no parent in the data path).
Each worker's subscription is also to a klukai matcher of its own (a tag in the SQL text, see
subscriber.tagged_sql): klukai 0.1.4 can deadlock a matcher for good when a second subscriber
attaches while it is still sending its first snapshot, which is what workers starting together
did (issue 23). The price is on Corrosion: N evaluations of the query at start and N matchers
following changes, for N workers (at most 4 with `auto`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

from .config import Config
from .events import log
from .metrics import merge, serve_metrics
from .sdnotify import notify
from .server import Listeners, serve_stats

WorkerMain = Callable[[Config, int, Listeners, Callable[[], None]], int]

# Counters that are the same table seen N times, not N shares of the work: the aggregate shows
# the smallest (a worker behind the others shows there first).
SAME_IN_EVERY_WORKER = {"cache_containers", "cache_names", "last_change_id"}
STOP_GRACE = 10.0


def worker_stats_path(path: str | None, index: int) -> str | None:
    return None if path is None else f"{path}.w{index}"


def aggregate(workers: list[dict[str, Any]]) -> dict[str, Any]:
    """One stats document for the daemon: work counters summed, table figures at their minimum,
    `ready` only when every worker is, the first state that is not live; and `workers` as read."""
    out: dict[str, Any] = {}
    answers: dict[str, int] = {}
    parts: list[dict[str, Any]] = []
    for w in workers:
        for key, value in w.items():
            if key == "answers" and isinstance(value, dict):
                for rcode, n in value.items():
                    answers[rcode] = answers.get(rcode, 0) + n
            elif key == "metrics" and isinstance(value, dict):
                parts.append(value)
            elif key in SAME_IN_EVERY_WORKER:
                if key not in out or value is None or (out[key] is not None and value < out[key]):
                    out[key] = value
            elif isinstance(value, int) and not isinstance(value, bool) and key != "pid":
                out[key] = out.get(key, 0) + value
            elif key not in out and key != "pid":
                out[key] = value
    states = [w.get("subscription_state") for w in workers]
    out.update(
        answers=answers,
        ready=bool(workers) and all(w.get("ready") is True for w in workers),
        subscription_state=next((s for s in states if s != "live"), "live") if workers else "starting",
        workers=[{k: v for k, v in w.items() if k != "metrics"} for w in workers],
    )
    if parts:
        out["metrics"] = merge(parts)
    return out


async def read_stats(path: str) -> dict[str, Any]:
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 2)
    try:
        data = await asyncio.wait_for(reader.read(1 << 20), 2)
    finally:
        writer.close()
    result: dict[str, Any] = json.loads(data)
    return result


class Supervisor:
    def __init__(
        self,
        config: Config,
        listeners: list[Listeners],
        worker_main: WorkerMain,
        metrics_socket: socket.socket | None = None,
    ) -> None:
        self.config = config
        self.listeners = listeners
        # The Prometheus endpoint is served here, never in a worker: a scrape (or a client that
        # holds its connection) costs the workers nothing but answering the stats socket.
        self.metrics_socket = metrics_socket
        self.worker_main = worker_main
        self.pids: list[int] = []

    def run(self) -> int:
        ready_r, ready_w = os.pipe()
        for index, own in enumerate(self.listeners):
            pid = os.fork()
            if pid == 0:
                os.close(ready_r)
                # A socket stays in the SO_REUSEPORT group while any process holds it: each
                # worker keeps only its own, so a dead worker's share goes to the others.
                for other in self.listeners:
                    if other is not own:
                        other.close()
                if self.metrics_socket is not None:
                    self.metrics_socket.close()
                code = 1

                def serving() -> None:
                    os.write(ready_w, b"r")

                try:
                    code = self.worker_main(self.config, index, own, serving)
                finally:
                    os._exit(code)
            self.pids.append(pid)
        for own in self.listeners:
            own.close()
        os.close(ready_w)
        return asyncio.run(self._supervise(ready_r))

    async def _supervise(self, ready_r: int) -> int:
        loop = asyncio.get_running_loop()
        finished = asyncio.get_running_loop().create_future()
        serving = 0

        def on_ready() -> None:
            nonlocal serving
            data = os.read(ready_r, 64)
            serving += len(data)
            if not data:
                loop.remove_reader(ready_r)
            if data and serving == len(self.pids):
                log("started", workers=len(self.pids), pids=",".join(map(str, self.pids)))
                notify(f"READY=1\nSTATUS={serving} workers listening")

        def on_child() -> None:
            for pid in list(self.pids):
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done, status = pid, 1 << 8  # reaped elsewhere: its end unknown, so a fault (exit 1)
                if done and not finished.done():
                    code = os.waitstatus_to_exitcode(status)
                    self.pids.remove(pid)
                    if code == 0:
                        # A worker ends 0 only on SIGTERM/SIGINT: a stop of the whole unit whose
                        # signal reached the worker before this process (a group-wide kill).
                        log("stop", reason="a worker was stopped", pid=pid)
                        finished.set_result(0)
                    else:
                        log("fatal", reason="a worker ended", pid=pid, exit_code=code)
                        finished.set_result(1)
                elif done:
                    self.pids.remove(pid)

        def on_stop() -> None:
            if not finished.done():
                finished.set_result(0)

        loop.add_reader(ready_r, on_ready)
        loop.add_signal_handler(signal.SIGCHLD, on_child)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop)
        on_child()  # a worker may have died before the handler was in place
        stats_server, metrics_server = await self._serve_stats()
        code = await finished
        if code == 0:
            notify("STOPPING=1")
            log("stopping")
        await self._stop_workers()
        for server in (stats_server, metrics_server):
            if server is not None:
                server.close()
        return code

    async def _serve_stats(self) -> tuple[asyncio.base_events.Server | None, asyncio.base_events.Server | None]:
        """The stats socket and, when configured, the Prometheus endpoint, both on the workers' sum."""
        path = self.config.stats_socket
        if path is None:
            return None, None
        paths = [worker_stats_path(path, i) for i in range(len(self.listeners))]

        async def collect() -> dict[str, Any]:
            workers = []
            for i, p in enumerate(paths):
                assert p is not None
                try:
                    workers.append(await read_stats(p))
                except (OSError, TimeoutError, ValueError) as e:
                    workers.append({"worker": i, "error": f"{type(e).__name__}: {e}", "ready": False})
            return aggregate(workers)

        stats_server = await serve_stats(path, collect)
        metrics_server = await serve_metrics(self.metrics_socket, collect) if self.metrics_socket is not None else None
        return stats_server, metrics_server

    async def _stop_workers(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = asyncio.get_running_loop().time() + STOP_GRACE
        while self.pids and asyncio.get_running_loop().time() < deadline:
            for pid in list(self.pids):
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        self.pids.remove(pid)
                except ChildProcessError:
                    self.pids.remove(pid)
            await asyncio.sleep(0.05)
        for pid in self.pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
