"""jiji-dns starts against freshly started Corrosion nodes: is every start ready, and how fast.

    .venv/bin/python bench/dns_starts.py [--starts 100] [--workers 1,2,4] [--big-starts 20]
                                         [--write-starts 20] [--budget 3600]

Sets (issue 23):
  * `--starts` starts with each worker count of `--workers`, each against a node started just
    before it and holding 3,000 rows (the worker counts take turns, so a slower minute of the
    machine does not land on one of them);
  * `--big-starts` starts with `--big-workers` workers against 64,768 rows (256 servers x 253);
  * `--write-starts` starts with `--big-workers` workers against 3,000 rows while a writer
    inserts and updates rows through the node's API from before the daemon starts until it is
    ready, then the table of every worker must equal the node's within `--settle` seconds.

A start is ready when the daemon's stats socket says so (every worker loaded its snapshot);
time to ready is from launching the process to that answer (stats polled every 20 ms). Each node
gets a copy of a database built once (rows written, node stopped), so every start meets a node
with no subscription yet, like a server booting. `subscriptions_abandoned` counts snapshots that
stalled and were asked again of a new matcher (a start that needed one is ready, but slower).

Not part of `make test`: the figures depend on the machine. Every loop is bounded in count and
every wait in time; `--budget` stops starting new runs after that many seconds (the report says
how many ran). Every process is stopped by its own pid; everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "hostbin"))
from jiji_dns.config import SUBSCRIPTION_SQL  # noqa: E402

from tests import harness  # noqa: E402

SERVERS = 256


def rows_for(total: int) -> list[list[str]]:
    """`total` containers spread over 256 servers, one service per slot, addresses by plan."""
    out = []
    for i in range(total):
        srv, k = i % SERVERS, i // SERVERS
        out.append(
            [f"x{srv}-{k}", "big", f"svc{k % 64}", f"srv{srv}", f"10.{210 + srv // 256}.{srv % 256}.{k + 2}", f"i{srv}"]
        )
    return out


def build_template(work: Path, total: int) -> Path:
    """A node's database holding `total` rows, the node stopped: copied for every start."""
    node = harness.CorrosionNode(work / f"template-{total}")
    try:
        node.execute(*[["INSERT INTO services (project, name) VALUES ('big', ?)", [f"svc{k}"]] for k in range(64)])
        rows = rows_for(total)
        for k in range(0, len(rows), 4000):
            node.execute(
                *[
                    [
                        "INSERT INTO containers (id, project, service, server_id, ip, instance_id, started_at)"
                        " VALUES (?,?,?,?,?,?,1)",
                        row,
                    ]
                    for row in rows[k : k + 4000]
                ]
            )
        have = node.query("SELECT COUNT(*) FROM containers")[0][0]
        assert have == total, f"template holds {have} rows, not {total}"
    finally:
        node.stop()  # graceful: the database is complete on disk
        shutil.rmtree(node.admin_dir, ignore_errors=True)
    return node.dir


def fresh_node(template: Path, where: Path) -> harness.CorrosionNode:
    where.mkdir(parents=True)
    for f in template.glob("state.db*"):
        shutil.copy(f, where / f.name)
    return harness.CorrosionNode(where)


def kill_node(node: harness.CorrosionNode) -> None:
    """Its data is thrown away: no graceful stop (the agent's takes seconds)."""
    if node.proc is not None:
        node.proc.kill()
        node.proc.wait(10)
        node.proc = None
    node.close()


class Writer:
    """Inserts and updates rows through the node's API, one transaction every `every` s, until
    stopped (at most `limit` transactions)."""

    def __init__(self, node: harness.CorrosionNode, every: float = 0.02, limit: int = 5000) -> None:
        self.node = node
        self.every = every
        self.limit = limit
        self.done = threading.Event()
        self.transactions = 0
        self.errors = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rnd = random.Random(os.getpid())
        for n in range(self.limit):
            if self.done.is_set():
                return
            srv = rnd.randrange(SERVERS)
            try:
                self.node.execute(
                    [
                        "INSERT INTO containers (id, project, service, server_id, ip, instance_id, started_at)"
                        " VALUES (?, 'big', 'svc0', ?, ?, ?, 2)",
                        [f"w{n}", f"srv{srv}", f"10.{210 + srv // 256}.{srv % 256}.{n % 250 + 2}", f"i{srv}"],
                    ],
                    [
                        "UPDATE containers SET ip = ?, started_at = started_at + 1 WHERE id = ?",
                        [f"10.{210 + srv // 256}.{srv % 256}.{(n * 7) % 250 + 2}", f"x{srv}-{n % 11}"],
                    ],
                )
                self.transactions += 1
            except OSError:
                self.errors += 1
            time.sleep(self.every)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        self.thread.join(30)


@dataclass
class Result:
    ready_s: float | None
    abandoned: int
    note: str = ""
    reconnects: int = 0


@dataclass
class Set:
    name: str
    workers: int
    rows: int
    writes: bool
    planned: int
    results: list[Result] = field(default_factory=list)


def one_start(
    pyz: Path, work: Path, template: Path, s: Set, n: int, timeout: float, settle: float, verbose: bool = False
) -> Result:
    node = fresh_node(template, work / f"{s.name}-{n}")
    writer = Writer(node) if s.writes else None
    d = None
    try:
        if writer:
            writer.start()
            time.sleep(0.2)  # writes already flowing when the daemon subscribes
        t0 = time.perf_counter()
        d = harness.DnsDaemon(pyz, work, node.api, workers=s.workers)
        ready_s = None
        deadline = t0 + timeout
        stats: dict[str, Any] = {}
        while time.perf_counter() < deadline:
            try:
                stats = d.stats()
            except (OSError, ValueError):
                stats = {}
            if stats.get("ready") is True:
                ready_s = time.perf_counter() - t0
                break
            time.sleep(0.02)
        abandoned = int(stats.get("subscriptions_abandoned", 0) or 0)
        reconnects = int(stats.get("reconnects", 0) or 0)
        if ready_s is None:
            states = [(w.get("subscription_state"), w.get("subscription_id")) for w in stats.get("workers", [])]
            return Result(
                None, abandoned, f"not ready in {timeout:.0f} s; workers {states}; log tail:\n{d.log()[-1500:]}"
            )
        note = ""
        if writer:
            writer.stop()
            want = node.query(f"SELECT COUNT(*) FROM ({SUBSCRIPTION_SQL})")[0][0]

            def converged() -> bool:
                workers = d.stats().get("workers") or [d.stats()]
                return all(w["cache_containers"] == want for w in workers)

            try:
                harness.wait_until(converged, settle, "every worker's table to equal the node's")
            except TimeoutError:
                counts = [w["cache_containers"] for w in (d.stats().get("workers") or [d.stats()])]
                return Result(ready_s, abandoned, f"ready, but tables {counts} != node {want} after {settle} s")
            note = f"{writer.transactions} write transactions"
        else:
            have = d.stats()["cache_containers"]
            if have != s.rows:
                return Result(ready_s, abandoned, f"ready with {have} containers, not {s.rows}")
            if reconnects:
                note = f"{reconnects} reconnects before ready"
        return Result(ready_s, abandoned, note, reconnects)
    finally:
        if writer:
            writer.stop()
        if d is not None:
            d.close()
        kill_node(node)
        if verbose:
            # What the node said about subscriptions (its warnings), for starts that stalled.
            lines = (node.dir / "agent.log").read_text(errors="replace").splitlines()
            said = [line[:300] for line in lines if "sub_id" in line and ("WARN" in line or "ERROR" in line)]
            print("\n".join(f"    node: {line}" for line in said[:5]))
        shutil.rmtree(work / f"{s.name}-{n}", ignore_errors=True)


def pct(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


def report(s: Set) -> bool:
    done = len(s.results)
    ready = [r.ready_s for r in s.results if r.ready_s is not None and not r.note.startswith("ready")]
    bad = [r for r in s.results if r.ready_s is None or r.note.startswith("ready")]
    times = sorted(t for t in ready if t is not None)
    abandoned = sum(r.abandoned for r in s.results)
    reconnects = sum(r.reconnects for r in s.results)
    line = f"{s.name:<28} {done:>3}/{s.planned:<3} ran, {len(times):>3} ready and correct"
    if times:
        line += f"; time to ready p50 {pct(times, 0.5):.2f} s, p99 {pct(times, 0.99):.2f} s, max {times[-1]:.2f} s"
    line += f"; snapshots abandoned {abandoned}, reconnects {reconnects}"
    print(line)
    for r in bad[:3]:
        print(f"   FAILED: {r.note}")
    return not bad and done == s.planned


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--starts", type=int, default=100, help="starts per worker count with 3,000 rows")
    p.add_argument("--workers", default="1,2,4", help="worker counts for the 3,000-row starts")
    p.add_argument("--big-starts", type=int, default=20, help="starts with 64,768 rows")
    p.add_argument("--write-starts", type=int, default=20, help="starts with rows written meanwhile")
    p.add_argument("--big-workers", type=int, default=4, help="workers for the 64,768-row and writing sets")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a start may take to be ready")
    p.add_argument("--settle", type=float, default=10.0, help="seconds for tables to match after writes stop")
    p.add_argument("--budget", type=float, default=3600.0, help="no new start after this many seconds")
    p.add_argument("--pyz", type=Path, help="a jiji-dns.pyz to measure instead of this tree's")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--verbose", action="store_true", help="show the node's subscription warnings after each start")
    a = p.parse_args()
    work = harness.tempdir("jiji-starts-")
    began = time.monotonic()
    try:
        pyz = a.pyz or work / "jiji-dns.pyz"
        if a.pyz is None:
            subprocess.run([sys.executable, "-m", "jiji_net.zipapps", "dns", str(pyz)], check=True)
        small = build_template(work, 3000)
        sets = [Set(f"3000 rows, {w} worker(s)", w, 3000, False, a.starts) for w in map(int, a.workers.split(","))]
        big = Set(f"64768 rows, {a.big_workers} workers", a.big_workers, 64768, False, a.big_starts)
        writing = Set(f"3000 rows + writes, {a.big_workers} w", a.big_workers, 3000, True, a.write_starts)
        print(f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()}", flush=True)
        plan: list[tuple[Set, Path]] = []
        for n in range(a.starts):
            plan += [(s, small) for s in sets]
            if n < a.write_starts:
                plan.append((writing, small))
        big_template = build_template(work, 64768) if a.big_starts else None
        if big_template is not None:
            plan += [(big, big_template)] * a.big_starts
        for i, (s, template) in enumerate(plan):
            if time.monotonic() - began > a.budget:
                print(f"budget of {a.budget:.0f} s spent after {i} of {len(plan)} starts")
                break
            r = one_start(pyz, work, template, s, len(s.results), a.timeout, a.settle, a.verbose)
            s.results.append(r)
            if r.ready_s is None or r.note.startswith("ready") or r.abandoned or r.reconnects:
                print(f"  start {i}: {s.name}: ready_s={r.ready_s} abandoned={r.abandoned} {r.note[:3000]}", flush=True)
            elif i % 25 == 0:
                print(f"  start {i}/{len(plan)}: {s.name} ready in {r.ready_s:.2f} s", flush=True)
        print(f"\n== {time.monotonic() - began:.0f} s, load average at end {os.getloadavg()}")
        ok = all([report(s) for s in [*sets, big, writing] if s.planned])
        return 0 if ok else 1
    finally:
        if a.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
