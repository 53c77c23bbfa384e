"""Entry point: config -> sockets -> one worker in this process, or N forked workers.

Signals are handled here only. With one worker the daemon is a single process, as before. With
N the listen addresses are bound N times with SO_REUSEPORT before forking (so a taken port is
reported once, before anything runs), each worker gets its own set and serves it with its own
table and Corrosion subscription, and this process supervises: it sends READY=1 when every worker
serves, answers the stats socket with the workers' counters added up, and ends (non-zero) as
soon as any worker ends, so systemd restarts the whole set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from . import config as config_mod
from .events import Counters, log, log_limited, warn
from .forwarder import Forwarder
from .hints import ChangeHints
from .metrics import WorkerMetrics, serve_metrics
from .owner import TableOwner
from .responder import Responder
from .sdnotify import notify
from .server import BindError, DNSServer, Listeners, bind_all, bind_tcp, fd_limits, probe_free, serve_stats
from .subscriber import Subscriber
from .supervisor import Supervisor, worker_stats_path


def _loop_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # Whatever asyncio would print as a traceback (a callback that raised, a failed accept)
    # becomes one rate-limited line: a hostile peer must not be able to fill the journal.
    error = context.get("exception")
    log_limited("loop_error", message=context.get("message", ""), error=f"{type(error).__name__}: {error}"[:300])


async def run_worker(
    cfg: config_mod.Config,
    listeners: Listeners,
    on_serving: Callable[[], None],
    metrics_socket: socket.socket | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (0) or until the subscriber or a hints task ends (1). With
    `metrics_socket` (a single worker) it serves the Prometheus endpoint too."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_loop_errors)
    counters = Counters()
    measured = WorkerMetrics(len(cfg.upstreams)) if cfg.metrics_listen is not None else None
    tables = TableOwner(cfg.domain, cfg.ttl, counters)
    responder = Responder(tables, cfg.negative_ttl)
    limits = fd_limits(cfg.max_tcp, cfg.max_inflight)
    if (limits.tcp_connections, limits.inflight) != (cfg.max_tcp, cfg.max_inflight):
        log(
            "limits_lowered", reason="open-file limit", tcp_connections=limits.tcp_connections, inflight=limits.inflight
        )
    forwarder = Forwarder(cfg.upstreams, cfg.upstream_timeout, limits.inflight, counters, measured)
    server = DNSServer(cfg, responder, forwarder, counters, limits.tcp_connections, measured)
    server.start(listeners)

    def stats() -> dict[str, Any]:
        out = counters.snapshot(len(tables.table.containers), len(tables.table.existing) - 1, tables.ready)
        out.update(
            answers=server.answers_by_rcode(),
            forwards_inflight=forwarder.inflight,
            tcp_connections=server.tcp_connections,
            upstreams=[str(u) for u in cfg.upstreams],
            version=__version__,
            pid=os.getpid(),
        )
        if measured is not None:
            out["metrics"] = measured.snapshot()
        return out

    stats_server = await serve_stats(cfg.stats_socket, stats) if cfg.stats_socket else None
    metrics_server = await serve_metrics(metrics_socket, stats) if metrics_socket is not None else None
    hints = ChangeHints(cfg, tables, counters)
    subscriber = Subscriber(cfg, tables, counters, on_connected=hints.request_reconcile)
    critical: dict[asyncio.Future[Any], str] = {
        asyncio.ensure_future(subscriber.run()): "subscriber",
        asyncio.ensure_future(hints.listen_loop()): "update notifications",
        asyncio.ensure_future(hints.refresh_loop()): "reconciler",
    }
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stop_task: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    log(
        "started",
        version=__version__,
        domain=cfg.domain,
        corrosion=str(cfg.corrosion_api),
        upstreams=",".join(str(u) for u in cfg.upstreams),
        upstreams_from=cfg.upstreams_from,
    )
    warn_about_upstreams(cfg)
    on_serving()
    done, _ = await asyncio.wait({stop_task, *critical}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    for task in done:
        if task in critical:
            # None of these ends on its own: whatever ended it, a daemon that no longer follows
            # Corrosion must not keep answering from a frozen table. systemd restarts us.
            error = task.exception() if not task.cancelled() else None
            log("fatal", task=critical[task], error=f"{type(error).__name__}: {error}" if error else "ended")
            code = 1
    if code == 0:
        notify("STOPPING=1")
        log("stopping")
    subscriber.stop()
    hints.stop()
    for task in [stop_task, *critical]:
        task.cancel()
    await server.close()
    forwarder.close()
    if stats_server is not None:
        stats_server.close()
    if metrics_server is not None:
        metrics_server.close()
    return code


def warn_about_upstreams(cfg: config_mod.Config) -> None:
    if cfg.upstreams_from == "fallback":
        warn(
            "upstreams_fallback",
            problem="no resolver in resolv.conf nor in systemd-resolved's list; forwarding to public resolvers,"
            " so names only this network's resolvers know will not resolve (set --upstream)",
        )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = config_mod.load(argv)
    except config_mod.ConfigError as e:
        print(f"jiji-dns: {e}", file=sys.stderr)
        return 2
    try:
        if cfg.workers > 1:
            probe_free(cfg.listen)
        sets = [bind_all(cfg.listen, reuse_port=cfg.workers > 1) for _ in range(cfg.workers)]
        metrics_socket = bind_tcp(cfg.metrics_listen) if cfg.metrics_listen is not None else None
    except BindError as e:
        log("fatal", error=str(e))
        print(f"jiji-dns: {e}", file=sys.stderr)
        return 1
    if cfg.workers == 1:
        return asyncio.run(
            run_worker(
                cfg,
                sets[0],
                lambda: notify("READY=1\nSTATUS=listening; waiting for the first Corrosion snapshot"),
                metrics_socket,
            )
        )
    return Supervisor(cfg, sets, run_in_child, metrics_socket).run()


def run_in_child(cfg: config_mod.Config, index: int, listeners: Listeners, on_serving: Callable[[], None]) -> int:
    """A forked worker's whole life; the supervisor turns its return value into an exit code."""
    os.environ.pop("NOTIFY_SOCKET", None)  # only the supervisor speaks to systemd
    own = dataclasses.replace(cfg, stats_socket=worker_stats_path(cfg.stats_socket, index))
    try:
        return asyncio.run(run_worker(own, listeners, on_serving))
    except BaseException:
        traceback.print_exc()
        return 1
