"""Program evaluation at scale, under Pulumi mocks: time and peak memory for N servers.

The full mesh has N*(N-1) peer entries (65,280 at 256 servers), so rendering is quadratic in N
by nature; what must not happen is worse than that. Each size runs in its own process (clean
peak RSS), and the bench prints time per peer entry against the smallest size measured in the
same run: a ratio near 1 means cost grows with the output and no faster.

    .venv/bin/python bench/program.py [--sizes 32,128,256]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def measure(n: int) -> dict[str, float]:
    sys.path.insert(0, str(REPO))
    from tests.program import evaluate

    binary = Path(tempfile.mkdtemp(prefix="jiji-bench-")) / "corrosion"
    binary.write_bytes(b"not really corrosion")
    config = {
        "servers": [
            {"name": f"s{i}", "host": f"h{i}.example.test", "port": 22, "index": i, "endpoint": f"198.51.{i // 250}.{i % 250 + 1}"}
            for i in range(n)
        ],
        "ssh_private_key": "not a key",
        "container_engine": "docker",
        "corrosion_local_path": str(binary),
    }
    started = time.perf_counter()
    result = evaluate(config)
    seconds = time.perf_counter() - started
    peers = sum(c.inputs["stdin"].count("[Peer]") for name, c in result.commands().items() if name.endswith("-wg-conf"))
    binary.unlink()
    binary.parent.rmdir()
    return {
        "servers": n,
        "resources": len(result.resources),
        "peer_entries": peers,
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="32,128,256")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return 0
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        out = subprocess.run(
            [sys.executable, "-W", "ignore", __file__, "--one", str(n)], capture_output=True, text=True, timeout=1800
        )
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    base_cost = base["seconds"] / max(base["peer_entries"], 1)
    print(f"{'servers':>7} {'resources':>9} {'peers':>7} {'seconds':>8} {'peak MB':>8} {'s/peer vs first':>15}")
    for r in rows:
        ratio = (r["seconds"] / max(r["peer_entries"], 1)) / base_cost
        print(
            f"{r['servers']:>7} {r['resources']:>9} {r['peer_entries']:>7} {r['seconds']:>8.1f}"
            f" {r['peak_rss_mb']:>8.0f} {ratio:>14.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
