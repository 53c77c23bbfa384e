"""Partitions of Corrosion nodes and how long after the heal every node has the same rows.

    .venv/bin/python bench/partitions.py [--shapes one,split,oneway,onewayin] [--runs 10] [--cut 50]
        [--watch new|old|none] [--provoke none|restart|rejoin] [--max-wait 330] [--json results.json]

The cut is 50 s by default: Corrosion declares the first member down 39 s after a cut and the
second 44 s (measured here); at 30 s no view has changed yet. `--provoke restart` restarts the
cut-off node 10 s before the cut, as the lab's fault module does before its partition test, so
that Corrosion's renewal of its identity 25-40 s after a start falls inside the cut and leaves the
one-sided view; `--provoke rejoin` does the same with `corrosion cluster rejoin` 5 s into the cut.
    .venv/bin/python bench/partitions.py --cleanup     # after a run killed with SIGKILL

Not part of `make test`: it takes minutes per shape. Needs root (network namespaces, iptables) and
the lab's corrosion binary. Each shape gets its own nodes (bench/nslab.py: namespaces `jpart-*`,
bridge `jpart-br0`, 198.19.0.0/24, nothing added to this machine's own namespace), which then live
through every run of that shape, as servers do:

  one     3 nodes, node 0 cut from 1 and 2 (both directions)
  split   4 nodes, nodes 0,1 cut from 2,3 (both directions)
  oneway  3 nodes, what node 0 sends to 1 and 2 is dropped; what they send arrives
  onewayin 3 nodes, what node 0 receives from 1 and 2 is dropped

A run: wait until every node lists every other as a member and all have the same rows; write a
row everyone gets; cut; during the cut delete that row and insert one on one side, insert one on
the other (and one more on each side 3 s before the heal); heal; then poll every node's rows every
0.25 s until all equal the expected set. Heal time = heal -> that moment. With `--watch` each node
also runs the rejoin watch (hostbin/jiji_ops/rejoin.py, `old` = the one on main) every second,
with the namespace's view of peers (echo) and members (`corrosion cluster members`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nslab  # noqa: E402
from jiji_ops import probe  # noqa: E402  (nslab put hostbin/ on the path)
from nslab import Node, NsLab  # noqa: E402

SHAPES: dict[str, tuple[int, list[tuple[int, list[int], str]], int, int]] = {
    # name: (nodes, cuts as (node, peers, direction), a writer on side A, a writer on side B)
    "one": (3, [(0, [1, 2], "both")], 1, 0),
    "split": (4, [(0, [2, 3], "both"), (1, [2, 3], "both")], 2, 0),
    "oneway": (3, [(0, [1, 2], "out")], 1, 0),
    "onewayin": (3, [(0, [1, 2], "in")], 1, 0),
}
ROW = ("INSERT OR REPLACE INTO containers (id, service, project, server_id, ip, health_status, started_at)"
       " VALUES (?, 'web', 'shop', ?, ?, 'healthy', 1)")  # fmt: skip


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


@dataclass
class Run:
    shape: str
    index: int
    cut_s: float
    heal_s: float | None = None  # None: not converged within max_wait
    members_at_heal: dict[int, list[str] | None] = field(default_factory=dict)
    foca_at_heal: dict[int, Any] = field(default_factory=dict)
    members_at_10s: dict[int, list[str] | None] = field(default_factory=dict)
    foca_at_10s: dict[int, Any] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)
    one_sided_at_10s: bool = False


# --- the watch, per node --------------------------------------------------------------------------
def load_module(name: str, path: Path | None = None, git_ref: str | None = None) -> types.ModuleType:
    """A module of jiji_ops from a file, or from `git show REF:hostbin/jiji_ops/NAME.py`."""
    if git_ref is not None:
        src = subprocess.run(["git", "-C", str(nslab.REPO), "show", f"{git_ref}:hostbin/jiji_ops/{name}.py"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        mod = types.ModuleType(f"jiji_ops._{git_ref.replace('/', '_')}_{name}")
        mod.__package__ = "jiji_ops"
        sys.modules[mod.__name__] = mod  # dataclasses look their module up
        exec(compile(src, f"{git_ref}:{name}.py", "exec"), mod.__dict__)  # noqa: S102 - our own file
        return mod
    assert path is not None
    spec = importlib.util.spec_from_file_location(f"jiji_ops.{name}", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "jiji_ops"
    sys.modules[mod.__name__] = mod
    spec.loader.exec_module(mod)
    return mod


class Watcher:
    """Runs `step` for every node every second on a thread; `actions` records what it did."""

    def __init__(self, lab: NsLab, kind: str) -> None:
        self.lab, self.kind = lab, kind
        self.actions: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        if kind == "old":
            self.mod = load_module("rejoin", git_ref="main")
        elif kind == "new":
            self.mod = load_module("rejoin", path=nslab.REPO / "hostbin" / "jiji_ops" / "rejoin.py")
        self.t0 = time.monotonic()

    def start(self) -> None:
        if self.kind == "none":
            return
        for node in self.lab.nodes:
            t = threading.Thread(target=self._loop, args=(node,), name=f"watch-{node.i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def record(self, node: Node, what: str) -> None:
        line = f"{time.monotonic() - self.t0:8.1f} n{node.i}: {what}"
        with self._lock:
            self.actions.append(line)
        log(f"watch {line}")

    def _loop(self, node: Node) -> None:
        step = self._old_step(node) if self.kind == "old" else self._new_step(node)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                step()
            except Exception as e:  # noqa: BLE001 - a watch keeps watching
                self.record(node, f"error {e!r}")
            self._stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))

    def _peers(self, node: Node) -> set[str]:
        return {p.ip for p in self.lab.nodes if p is not node}

    def _answering(self, node: Node, addresses: set[str]) -> set[str]:
        assert node.thread is not None
        return node.thread.run(lambda: probe.answering(addresses) or set())

    def _old_step(self, node: Node) -> Callable[[], None]:
        mod, watch = self.mod, self.mod.Watch()

        def step() -> None:
            peers = self._peers(node)
            members = node.members()
            missing: set[str] = set()
            if members is not None and mod.outside(members, peers, peers):
                answered = self._answering(node, peers - mod.ips_of(members))
                missing = mod.outside(members, peers, answered)
            up = node.started_at if node.proc is not None else None
            if watch.check(time.monotonic(), up if missing else None, missing):
                self.record(node, f"restart (old rule: {sorted(missing)} answer, not members)")
                node.restart()

        return step

    def _new_step(self, node: Node) -> Callable[[], None]:
        mod = self.mod
        watch = mod.Watch(me=node.ip)

        def step() -> None:
            members = node.members()
            reason = mod.step(
                watch,
                time.monotonic(),
                self._peers(node),
                mod.ips_of(members) if members is not None else None,
                lambda ask: self._answering(node, ask),
                lambda: node.started_at if node.proc is not None else None,
            )
            if reason:
                self.record(node, f"restart: {reason}")
                node.restart(grace=mod.GRACE)

        return step


# --- one run --------------------------------------------------------------------------------------
def wait_until(cond: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> float:
    start = time.monotonic()
    while True:
        try:
            if cond():
                return time.monotonic() - start
        except Exception:  # noqa: BLE001 - a node restarting
            pass
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


def rows(node: Node) -> list[str] | None:
    try:
        return [r[0] for r in node.query("SELECT id FROM containers ORDER BY id")]
    except Exception:  # noqa: BLE001 - restarting, or cut from its own API? (never: API is loopback)
        return None


def healthy(lab: NsLab) -> bool:
    for node in lab.nodes:
        want = sorted(p.gossip for p in lab.nodes if p is not node)
        if node.members() != want:
            return False
    views = [rows(n) for n in lab.nodes]
    return views[0] is not None and all(v == views[0] for v in views)


def snapshot(lab: NsLab) -> tuple[dict[int, list[str] | None], dict[int, Any]]:
    return ({n.i: n.members() for n in lab.nodes}, {n.i: n.foca_states() for n in lab.nodes})


def one_sided(lab: NsLab, members: dict[int, list[str] | None]) -> bool:
    """Some node lists a peer that does not list it back."""
    for node in lab.nodes:
        for addr in members.get(node.i) or []:
            peer = next((p for p in lab.nodes if p.gossip == addr), None)
            if peer is not None and node.gossip not in (members.get(peer.i) or []):
                return True
    return False


def run_once(
    lab: NsLab, shape: str, index: int, cut_s: float, max_wait: float, watcher: Watcher, provoke: str = "none"
) -> Run:
    n, cuts, side_a, side_b = SHAPES[shape]
    run = Run(shape, index, cut_s)
    wait_until(lambda: healthy(lab), 300, "every node a member of every other, same rows")
    a, b = lab.nodes[side_a], lab.nodes[side_b]
    base, ra, rb, ra2, rb2 = (f"r{index}-{x}" for x in ("base", "a", "b", "a2", "b2"))
    a.execute([ROW, [base, f"n{a.i}", "10.0.0.1"]])
    wait_until(lambda: all(base in (rows(x) or []) for x in lab.nodes), 30, "base row everywhere", 0.2)
    before = set(rows(a) or [])
    expected = sorted((before - {base}) | {ra, rb, ra2, rb2})
    n_actions = len(watcher.actions)
    if provoke == "restart":
        # As in the lab's fault module, where lab1 had rebooted shortly before the cut: Corrosion
        # renews a restarted node's identity 25-40 s after its start, here inside the cut.
        b.restart()
        log(f"  provoke: restarted n{b.i}; cutting 10 s later")
        time.sleep(10)
    cut_at = time.monotonic()
    for i, peers, direction in cuts:
        lab.cut(i, peers, direction)
    log(f"{shape} #{index}: cut for {cut_s:.0f} s")
    try:
        time.sleep(2)
        a.execute(["DELETE FROM containers WHERE id = ?", [base]], [ROW, [ra, f"n{a.i}", "10.0.0.2"]])
        b.execute([ROW, [rb, f"n{b.i}", "10.0.0.3"]])
        if provoke == "rejoin":
            # The identity change foca makes when it learns it was declared down (or that Corrosion
            # makes 25-40 s after a start), made on purpose inside the cut, while the QUIC
            # connections still look alive (idle timeout 30 s): its announcement is lost for sure.
            time.sleep(max(0.0, cut_at + 5 - time.monotonic()))
            log(f"  provoke: n{b.i} `corrosion cluster rejoin`: {b.cli('cluster', 'rejoin')[0]}")
        time.sleep(max(0.0, cut_at + cut_s - 3 - time.monotonic()))
        a.execute([ROW, [ra2, f"n{a.i}", "10.0.0.4"]])
        b.execute([ROW, [rb2, f"n{b.i}", "10.0.0.5"]])
        time.sleep(max(0.0, cut_at + cut_s - time.monotonic()))
        run.members_at_heal, run.foca_at_heal = snapshot(lab)
    finally:
        for i, _peers, _direction in cuts:
            lab.heal(i)
    healed = time.monotonic()
    took10 = False
    while time.monotonic() - healed < max_wait:
        views = [rows(x) for x in lab.nodes]
        if all(v == expected for v in views):
            run.heal_s = time.monotonic() - healed
            break
        if not took10 and time.monotonic() - healed >= 10:
            took10 = True
            run.members_at_10s, run.foca_at_10s = snapshot(lab)
            run.one_sided_at_10s = one_sided(lab, run.members_at_10s)
            log(f"  not converged after 10 s: members {run.members_at_10s}; rows {views}")
        time.sleep(0.25)
    time.sleep(5)  # let a watch that decided at the heal act before the next run looks at health
    run.actions = watcher.actions[n_actions:]
    heal = f"{run.heal_s:.1f} s" if run.heal_s is not None else f"NOT within {max_wait:.0f} s"
    log(f"{shape} #{index}: healed in {heal}; members at heal {run.members_at_heal}"
        + (f"; one-sided at +10 s: {run.members_at_10s}" if run.one_sided_at_10s else ""))  # fmt: skip
    return run


def distribution(values: list[float | None]) -> str:
    done = sorted(v for v in values if v is not None)
    missing = len(values) - len(done)
    if not done:
        return f"none converged ({missing} runs)"
    q = statistics.quantiles(done, n=10) if len(done) >= 2 else [done[0]] * 9
    return (f"n={len(values)} min {done[0]:.1f} p50 {statistics.median(done):.1f} p90 {q[8]:.1f} max {done[-1]:.1f} s;"
            f" >10 s: {sum(1 for v in done if v > 10) + missing}; not converged: {missing};"
            f" all: {', '.join(f'{v:.1f}' for v in done)}")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="one,split,oneway,onewayin")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--cut", type=float, default=50.0)
    p.add_argument("--watch", choices=["new", "old", "none"], default="new")
    p.add_argument("--max-wait", type=float, default=330.0, help="give up on a heal after this many s")
    p.add_argument("--settle", type=float, default=40.0, help="s after the nodes start before the first cut")
    p.add_argument("--json", type=Path, help="write every run here")
    p.add_argument(
        "--provoke",
        choices=["none", "restart", "rejoin"],
        default="none",
        help="make the cut-off node renew its identity inside the cut: restart it just before (restart)"
        " or `corrosion cluster rejoin` halfway through (rejoin)",
    )
    p.add_argument("--cleanup", action="store_true", help="remove jpart- namespaces a killed run left")
    args = p.parse_args()
    if args.cleanup:
        nslab.cleanup_leftovers()
        return 0
    if not 1 <= args.runs <= 50 or not 1 <= args.cut <= 900:
        p.error("--runs 1..50, --cut 1..900")
    results: list[Run] = []
    for shape in args.shapes.split(","):
        n = SHAPES[shape][0]
        with NsLab(n) as lab:
            log(f"{shape}: {n} nodes up in {lab.workdir}; settling {args.settle:.0f} s")
            watcher = Watcher(lab, args.watch)
            watcher.start()
            try:
                time.sleep(args.settle)
                for k in range(args.runs):
                    results.append(run_once(lab, shape, k, args.cut, args.max_wait, watcher, args.provoke))
                    if args.json:
                        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
            finally:
                watcher.stop()
    print(
        f"\nwatch={args.watch} cut={args.cut:.0f} s provoke={args.provoke}:"
        " time from heal until every node has the same rows"
    )
    for shape in args.shapes.split(","):
        runs = [r for r in results if r.shape == shape]
        print(f"  {shape:8s} {distribution([r.heal_s for r in runs])};"
              f" one-sided at +10 s in {sum(r.one_sided_at_10s for r in runs)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
