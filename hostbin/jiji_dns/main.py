"""Entry point: config -> state -> listeners -> subscriber; signals handled here only."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from . import config as config_mod
from .events import Counters, log
from .forwarder import Forwarder
from .hints import ChangeHints
from .responder import Responder
from .sdnotify import notify
from .server import BindError, DNSServer, serve_stats
from .subscriber import Subscriber


async def run(cfg: config_mod.Config) -> int:
    counters = Counters()
    responder = Responder(cfg.domain, cfg.ttl, cfg.negative_ttl)
    forwarder = Forwarder(cfg.upstreams, cfg.upstream_timeout, cfg.max_inflight, counters)
    server = DNSServer(cfg, responder, forwarder, counters)
    try:
        await server.start()
    except BindError as e:
        log("fatal", error=str(e))
        print(f"jiji-dns: {e}", file=sys.stderr)
        return 1

    def stats() -> dict[str, Any]:
        out = counters.snapshot(len(responder.table.containers), len(responder.table.existing) - 1, responder.ready)
        out.update(
            answers=server.answers_by_rcode(),
            forwards_inflight=forwarder.inflight,
            upstreams=[str(u) for u in cfg.upstreams],
            version=__version__,
        )
        return out

    stats_server = await serve_stats(cfg.stats_socket, stats) if cfg.stats_socket else None
    hints = ChangeHints(cfg, responder, counters)
    subscriber = Subscriber(cfg, responder, counters, on_connected=hints.request_reconcile)
    sub_task = asyncio.ensure_future(subscriber.run())
    hints_task = asyncio.ensure_future(hints.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log(
        "started",
        version=__version__,
        domain=cfg.domain,
        corrosion=str(cfg.corrosion_api),
        upstreams=",".join(str(u) for u in cfg.upstreams),
    )
    notify("READY=1\nSTATUS=listening; waiting for the first Corrosion snapshot")
    await stop.wait()
    notify("STOPPING=1")
    log("stopping")
    subscriber.stop()
    hints.stop()
    sub_task.cancel()
    hints_task.cancel()
    await server.close()
    forwarder.close()
    if stats_server is not None:
        stats_server.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = config_mod.load(argv)
    except config_mod.ConfigError as e:
        print(f"jiji-dns: {e}", file=sys.stderr)
        return 2
    return asyncio.run(run(cfg))
