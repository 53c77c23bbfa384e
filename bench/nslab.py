"""Corrosion agents in network namespaces of their own, for partition experiments (bench/partitions.py).

Everything it makes is named `jpart-*`: one namespace `jpart-hub` holding the bridge `jpart-br0`,
one namespace `jpart-nI` per node with a veth `jpart-eI` (address 198.19.0.(11+I)/24) whose peer
`jpart-hI` sits on the bridge. Nothing is added to the namespace this runs in: no link, no address,
no route, no firewall rule. A cut is an iptables chain `JPART-CUT` inside a node's namespace.

Each agent is started with `ip netns exec` (which execs, so the pid we hold is the agent's) and
stopped by that pid. `close()` removes exactly what `open()` made (the names it recorded), and is
called from `finally` and from SIGINT/SIGTERM/SIGHUP handlers.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "hostbin"))
from tests import harness  # noqa: E402

PREFIX = "jpart-"
# Two runs side by side need different namespace names: JPART_TAG=b gives jpart-bhub, jpart-bn0...
TAG = os.environ.get("JPART_TAG", "")
if not TAG.isalnum() and TAG != "":
    raise SystemExit("JPART_TAG: letters and digits only")
HUB = f"{PREFIX}{TAG}hub"
BRIDGE = "jpart-br0"
CHAIN = "JPART-CUT"
GOSSIP_PORT = 9280
API_PORT = 9220
MAX_NODES = 8
SEEDS = 2
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def node_ip(i: int) -> str:
    if not 0 <= i < MAX_NODES:
        raise ValueError(i)
    return f"198.19.0.{11 + i}"


def sh(*argv: str, check: bool = True, timeout: float = 20) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {out.returncode}: {out.stderr.strip()}")
    return out.stdout


class NsThread:
    """One thread that has entered a network namespace (setns is per thread) and runs what it is given."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self._q: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]] | None] = queue.Queue()
        ready: queue.Queue[BaseException | None] = queue.Queue()
        self._t = threading.Thread(target=self._main, args=(ready,), name=f"ns-{ns}", daemon=True)
        self._t.start()
        err = ready.get(timeout=10)
        if err is not None:
            raise err

    def _main(self, ready: queue.Queue[BaseException | None]) -> None:
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            fd = os.open(f"/run/netns/{self.ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {self.ns}")
            finally:
                os.close(fd)
        except BaseException as e:  # noqa: BLE001 - handed to the constructor
            ready.put(e)
            return
        ready.put(None)
        while (item := self._q.get()) is not None:
            fn, reply = item
            try:
                reply.put((True, fn()))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                reply.put((False, e))

    def run(self, fn: Callable[[], T], timeout: float = 30) -> T:
        reply: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self._q.put((fn, reply))
        ok, value = reply.get(timeout=timeout)
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def close(self) -> None:
        self._q.put(None)
        self._t.join(5)


class Node:
    def __init__(self, lab: NsLab, i: int) -> None:
        self.lab, self.i = lab, i
        self.ns = f"{PREFIX}{TAG}n{i}"
        self.ip = node_ip(i)
        self.dir = lab.workdir / f"n{i}"
        self.config = self.dir / "config.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None  # time.monotonic() of the last start
        self.thread: NsThread | None = None

    @property
    def gossip(self) -> str:
        return f"{self.ip}:{GOSSIP_PORT}"

    def write_config(self, peers: list[str]) -> None:
        (self.dir / "schema").mkdir(parents=True, exist_ok=True)
        shutil.copy(harness.SCHEMA, self.dir / "schema" / "jiji.sql")
        boot = ", ".join(f'"{p}"' for p in peers)
        self.config.write_text(
            f'[db]\npath = "{self.dir}/state.db"\nschema_paths = ["{self.dir}/schema"]\n\n'
            f'[gossip]\naddr = "{self.gossip}"\nbootstrap = [{boot}]\nplaintext = true\nmax_mtu = 1232\n\n'
            f"[perf]\nmax_sync_backoff = 2\n\n"
            f'[api]\naddr = "127.0.0.1:{API_PORT}"\n\n'
            f'[admin]\npath = "{self.dir}/admin.sock"\n\n[log]\ncolors = false\n'
        )

    def start(self) -> None:
        assert self.proc is None
        log = open(self.dir / "agent.log", "ab")
        log.write(f"\n=== start at monotonic {time.monotonic():.1f}\n".encode())
        log.flush()
        env = dict(
            os.environ,
            TMPDIR=str(self.dir),
            RUST_LOG=os.environ.get("JPART_RUST_LOG", "warn,foca=debug,klukai_agent=info,klukai=info"),
        )
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, str(self.lab.binary), "agent", "-c", str(self.config)],
            stdout=log,
            stderr=log,
            env=env,
        )
        log.close()
        self.started_at = time.monotonic()
        self.lab.pids.add(self.proc.pid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.query("SELECT 1") == [[1]]:
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.ns}: corrosion exited {self.proc.returncode}; see {self.dir}/agent.log")
            time.sleep(0.2)
        raise TimeoutError(f"{self.ns}: corrosion API not up in 30 s")

    def stop(self) -> None:
        if self.proc is not None:
            harness._stop(self.proc)
            self.lab.pids.discard(self.proc.pid)
            self.proc = None

    def restart(self, grace: float | None = None) -> None:
        """Stop and start. Without `grace` a graceful stop (SIGTERM: Corrosion then spends 5 s or more
        leaving); with it, SIGTERM, `grace` s, SIGKILL (as `jiji-net rejoin` does)."""
        if grace is not None and self.proc is not None:
            proc = self.proc
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            self.lab.pids.discard(proc.pid)
            self.proc = None
        self.stop()
        self.start()

    def _post(self, path: str, body: Any, timeout: float = 5) -> bytes:
        def call() -> bytes:
            req = urllib.request.Request(
                f"http://127.0.0.1:{API_PORT}{path}",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                data: bytes = resp.read()
                return data

        assert self.thread is not None
        return self.thread.run(call, timeout + 5)

    def query(self, sql: str, params: list[Any] | None = None) -> list[list[Any]]:
        rows = []
        for line in self._post("/v1/queries", [sql, params] if params else sql).splitlines():
            event = json.loads(line)
            if "row" in event:
                rows.append(event["row"][1])
            elif "error" in event:
                raise RuntimeError(event["error"])
        return rows

    def execute(self, *statements: Any) -> Any:
        return json.loads(self._post("/v1/transactions", list(statements)))

    def cli(self, *args: str, timeout: float = 10) -> tuple[int, str]:
        """`corrosion -c CONFIG ARGS` over the admin socket (a path: reachable from any namespace)."""
        try:
            out = subprocess.run(
                [str(self.lab.binary), "-c", str(self.config), *args], capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return 124, "timeout"
        return out.returncode, out.stdout if out.returncode == 0 else (out.stderr or out.stdout)

    def members(self) -> list[str] | None:
        """Gossip addresses `cluster members` lists, None when it could not be asked."""
        from jiji_ops.members import parse_members

        code, text = self.cli("cluster", "members")
        if code != 0:
            return None
        return sorted({m.addr for m in parse_members(text)})

    def foca_states(self) -> list[tuple[str, str, int]] | None:
        """(addr, state, ts) of every identity foca knows, `cluster membership-states`."""
        code, text = self.cli("cluster", "membership-states")
        if code != 0:
            return None
        out = []
        decoder, pos = json.JSONDecoder(), 0
        while (pos := text.find("{", pos)) >= 0:  # JSON objects, with the CLI's log lines between
            try:
                obj, pos = decoder.raw_decode(text, pos)
            except ValueError:
                pos += 1
                continue
            ident = obj.get("id", {}) if isinstance(obj, dict) else {}
            if isinstance(ident, dict) and "addr" in ident:
                out.append((str(ident.get("addr")), str(obj.get("state")), int(ident.get("ts", 0))))
        return sorted(out)

    def iptables(self, *args: str) -> None:
        sh("ip", "netns", "exec", self.ns, "iptables", "-w", "5", *args)


class NsLab:
    """`n` Corrosion nodes in jpart- namespaces on one bridge; use as a context manager."""

    def __init__(self, n: int, workdir: Path | None = None) -> None:
        if not 2 <= n <= MAX_NODES:
            raise ValueError(n)
        self.n = n
        self.binary = harness.corrosion_binary()
        if not self.binary.exists():
            raise SystemExit(f"no corrosion binary at {self.binary}")
        self.workdir = workdir or Path(f"/tmp/jpart-{TAG}{os.getpid()}-{time.monotonic_ns()}")
        self.nodes = [Node(self, i) for i in range(n)]
        self.made_ns: list[str] = []
        self.pids: set[int] = set()
        self._old_handlers: dict[int, Any] = {}

    def __enter__(self) -> NsLab:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_signal(self, signum: int, _frame: object) -> None:
        raise SystemExit(f"signal {signum}: cleaning up")

    def open(self) -> None:
        existing = set(sh("ip", "netns", "list").split())
        clash = sorted(n for n in existing if n in {HUB, *(node.ns for node in self.nodes)})
        if clash:
            raise SystemExit(f"namespaces {clash} exist already (another run?); remove them first (--cleanup)")
        self.workdir.mkdir(parents=True, exist_ok=False)
        self._add_ns(HUB)
        sh("ip", "-n", HUB, "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "-n", HUB, "link", "set", BRIDGE, "up")
        for node in self.nodes:
            self._add_ns(node.ns)
            sh("ip", "-n", HUB, "link", "add", f"{PREFIX}h{node.i}", "type", "veth",
               "peer", "name", f"{PREFIX}e{node.i}", "netns", node.ns)  # fmt: skip
            sh("ip", "-n", HUB, "link", "set", f"{PREFIX}h{node.i}", "master", BRIDGE, "up")
            sh("ip", "-n", node.ns, "link", "set", "lo", "up")
            sh("ip", "-n", node.ns, "addr", "add", f"{node.ip}/24", "dev", f"{PREFIX}e{node.i}")
            sh("ip", "-n", node.ns, "link", "set", f"{PREFIX}e{node.i}", "up")
            node.thread = NsThread(node.ns)
            # Seeds as the program picks them (jiji_net/topology.py): the first SEEDS others by index.
            node.write_config([p.gossip for p in self.nodes if p is not node][:SEEDS])
        for node in self.nodes:
            node.start()

    def _add_ns(self, name: str) -> None:
        assert name.startswith(PREFIX)
        sh("ip", "netns", "add", name)
        self.made_ns.append(name)

    def close(self) -> None:
        for node in self.nodes:
            try:
                node.stop()
            except Exception as e:  # noqa: BLE001 - keep cleaning
                print(f"cleanup: stopping {node.ns}: {e}", file=sys.stderr)
            if node.thread is not None:
                node.thread.close()
                node.thread = None
        for pid in list(self.pids):  # any agent a failed start left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.pids.discard(pid)
        for name in reversed(self.made_ns):  # deleting a namespace deletes its links and the bridge
            sh("ip", "netns", "del", name, check=False)
        self.made_ns.clear()
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()

    # --- cuts -----------------------------------------------------------------------------------
    def cut(self, i: int, peers: list[int], direction: str = "both") -> None:
        """Drop node i's packets with `peers`: both ways, only what i sends ("out") or only what i
        receives ("in")."""
        node = self.nodes[i]
        node.iptables("-N", CHAIN)
        for j in peers:
            if direction in ("both", "in"):
                node.iptables("-A", CHAIN, "-s", node_ip(j), "-j", "DROP")
            if direction in ("both", "out"):
                node.iptables("-A", CHAIN, "-d", node_ip(j), "-j", "DROP")
        node.iptables("-I", "INPUT", "-j", CHAIN)
        node.iptables("-I", "OUTPUT", "-j", CHAIN)

    def heal(self, i: int) -> None:
        node = self.nodes[i]
        for args in (("-D", "INPUT", "-j", CHAIN), ("-D", "OUTPUT", "-j", CHAIN), ("-F", CHAIN), ("-X", CHAIN)):
            sh("ip", "netns", "exec", node.ns, "iptables", "-w", "5", *args, check=False)


def cleanup_leftovers() -> None:
    """Remove jpart- namespaces and agents left by a run that was killed outright (SIGKILL)."""
    for name in sh("ip", "netns", "list").split():
        if name.startswith(PREFIX):
            pids = sh("ip", "netns", "pids", name, check=False).split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", name, check=False)
            print(f"removed namespace {name} (and {len(pids)} process(es) in it)")
