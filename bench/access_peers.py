"""10,000 declared access peers: what they cost jiji-jit, against preloading them into WireGuard.

    .venv/bin/python bench/access_peers.py [--peers 10000] [--refreshes 20] [--lookups 100000]

jiji-jit (issue 21) keeps the declared peers out of the kernel: it reads the registry's
`access_peers` table every second (jitpeers.REFRESH) and looks a key up when its initiation
arrives. Measured here, on a Corrosion node on loopback holding --peers rows:
  * one look at the registry while nothing changed (the fingerprint of the table's change clock,
    jitpeers.FINGERPRINT), and one after a change (the fingerprint, then the whole table read
    through the node's API and parsed), p50 and p99 of --refreshes each;
  * one lookup, p50 and p99 (--lookups of random keys, half of them declared);
  * the memory the declared peers take in the daemon (tracemalloc of the parsed table).
The peer measured in the same run is what JIT avoids: the same keys loaded into a wireguard-go
interface (`wg setconf` of --peers [Peer] sections, in a network namespace of its own), with the
time that takes and wireguard-go's resident memory before and after; that load is what a server
preloading every access peer would do at every boot.

Not part of `make test`: the figures depend on the machine. Needs root (a network namespace) and
the lab's corrosion binary; everything binds to 127.0.0.1, every process is stopped by its pid and
the namespace `jibench-PID` is deleted.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "hostbin"))
from jiji_ops import jitpeers  # noqa: E402
from jiji_ops.corrosion import Corrosion  # noqa: E402

from tests import harness  # noqa: E402


def key(i: int) -> str:
    return base64.b64encode(hashlib.sha256(f"bench-peer-{i}".encode()).digest()).decode()


def address(i: int) -> str:
    return f"10.211.{i // 250}.{i % 250 + 1}"


def quantiles(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), statistics.quantiles(values, n=100)[98]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def preload(peers: int, work: Path) -> tuple[float, int, int]:
    """Seconds `wg setconf` takes to load `peers` peers into a fresh wireguard-go interface, and
    wireguard-go's RSS (KiB) before and after."""
    ns, interface = f"jibench-{os.getpid()}", "jbench0"
    conf = work / "preload.conf"
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    lines = ["[Interface]", f"PrivateKey = {private}", "ListenPort = 51997"]
    for i in range(peers):
        lines += ["[Peer]", f"PublicKey = {key(i)}", f"AllowedIPs = {address(i)}/32"]
    conf.write_text("\n".join(lines) + "\n")
    conf.chmod(0o600)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "wireguard-go", interface], check=True, capture_output=True)
        pid = int(subprocess.run(["pgrep", "-n", "-f", f"wireguard-go {interface}"], capture_output=True, text=True, check=True).stdout)
        before = rss_kib(pid)
        started = time.monotonic()
        subprocess.run(["ip", "netns", "exec", ns, "wg", "setconf", interface, str(conf)], check=True, timeout=600)
        seconds = time.monotonic() - started
        after = rss_kib(pid)
        return seconds, before, after
    finally:
        subprocess.run(["ip", "-n", ns, "link", "del", interface], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        Path(f"/var/run/wireguard/{interface}.sock").unlink(missing_ok=True)
        conf.unlink(missing_ok=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=int, default=10_000)
    p.add_argument("--refreshes", type=int, default=20)
    p.add_argument("--lookups", type=int, default=100_000)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="jiji-bench-access-"))
    node = harness.CorrosionNode(work / "node")
    try:
        api = Corrosion(node.api, timeout=30)
        rows = [[f"peer-{i}", key(i), address(i), 0, "stack"] for i in range(args.peers)]
        for start in range(0, len(rows), 1000):
            api.execute([("INSERT INTO access_peers (name, public_key, address, expires_at, origin) VALUES (?, ?, ?, ?, ?)", r)
                         for r in rows[start : start + 1000]])  # fmt: skip
        registry = jitpeers.RegistryPeers(
            lambda: api.query(jitpeers.QUERY)[1], fingerprint=lambda: api.query(jitpeers.FINGERPRINT)[1]
        )
        registry.refresh_once()
        quiet, changed = [], []
        for i in range(args.refreshes):
            started = time.perf_counter()
            registry.refresh_once()
            quiet.append(time.perf_counter() - started)
            api.execute([("UPDATE access_peers SET expires_at = ? WHERE name = 'peer-0'", [i + 1])])
            started = time.perf_counter()
            registry.refresh_once()
            changed.append(time.perf_counter() - started)
        assert len(registry.peers) == args.peers, len(registry.peers)
        tracemalloc.start()
        parsed, _ = jitpeers.parse_rows(api.query(jitpeers.QUERY)[1])
        table_bytes = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert len(parsed) == args.peers
        wanted = [base64.b64decode(key(random.randrange(args.peers * 2))) for _ in range(args.lookups)]
        lookups = []
        for k in wanted:
            started = time.perf_counter()
            registry.lookup(k)
            lookups.append(time.perf_counter() - started)
    finally:
        node.close()
    load_seconds, rss_before, rss_after = preload(args.peers, work)
    q50, q99 = quantiles(quiet)
    r50, r99 = quantiles(changed)
    l50, l99 = quantiles(lookups)
    print(f"{args.peers} declared access peers")
    print(f"  jiji-jit look, nothing changed (fingerprint): p50 {q50 * 1000:.1f} ms, p99 {q99 * 1000:.1f} ms,"
          f" once a second: {q50 * 100:.1f}% of a core")  # fmt: skip
    print(f"  jiji-jit look after a change (fingerprint + read + parse): p50 {r50 * 1000:.1f} ms, p99 {r99 * 1000:.1f} ms")
    print(f"  jiji-jit lookup: p50 {l50 * 1e6:.2f} us, p99 {l99 * 1e6:.2f} us ({args.lookups} lookups)")
    print(f"  jiji-jit table: {table_bytes / 1024:.0f} KiB")
    print(f"  preloaded instead (wg setconf into wireguard-go): {load_seconds:.2f} s,"
          f" wireguard-go RSS {rss_before} -> {rss_after} KiB (+{rss_after - rss_before} KiB)")
    print(f"  ratio, preloading / one full jiji-jit read: {load_seconds / r50:.0f}x the time;"
          f" kernel peers at boot: {args.peers} preloaded vs 0 with jiji-jit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
