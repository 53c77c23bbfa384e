"""`pulumi up` on lab hosts at growing sizes: for each size N, a cold up of N servers, a no-op up,
adding one server, then destroy; the growth per added server between sizes.

Real sshd, systemd, wireguard-go and Corrosion on every host (lab/lab.sh), through the real
Pulumi engine as `python -m deploy` runs it (the output says which CLI and provider ran). One lab of
max(N)+1 hosts serves every size, one stack at a time; every stack is destroyed before the next.

    .venv/bin/python bench/lab_scale.py [--sizes 3,8,16] [--keep-lab]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import Lab  # noqa: E402
from tests.engines import make_engine  # noqa: E402
from tests.harness import corrosion_binary  # noqa: E402

KEY = REPO / ".lab" / "lab" / "id_ed25519"


def host_keys(lab: Lab, n: int) -> dict[str, str]:
    scan = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", *(lab.ip(i) for i in range(n))], capture_output=True, text=True, timeout=60
    ).stdout
    keys = {line.split()[0]: " ".join(line.split()[1:3]) for line in scan.splitlines() if not line.startswith("#")}
    return {lab.ip(i): keys[lab.ip(i)] for i in range(n)}


def config(lab: Lab, n: int, pinned: dict[str, str]) -> dict[str, Any]:
    return {
        "servers": [
            {"name": f"lab{i}", "host": lab.ip(i), "index": i, "endpoint": lab.ip(i), "host_key": pinned[lab.ip(i)]}
            for i in range(n)
        ],  # fmt: skip
        "ssh_private_key": KEY.read_text(),
        "container_engine": "none",
        "corrosion_local_path": str(corrosion_binary()),
    }


def measure(lab: Lab, n: int, pinned: dict[str, str]) -> dict[str, Any]:
    engine = make_engine(f"scale{n}")
    try:
        cold = engine.up(config(lab, n, pinned))
        noop = engine.up(config(lab, n, pinned))
        grown = engine.up(config(lab, n + 1, pinned))
        # Every server answers for every other: the mesh really formed, not just the steps ran.
        last = n  # the added server's index
        peers = lab.run(last, "wg show jiji0 peers | wc -l").strip()
        gone = engine.destroy()
        return {
            "servers": n,
            "path": engine.path,
            "cold_s": cold.seconds,
            "cold_steps": len(cold.actions),
            "noop_s": noop.seconds,
            "noop_steps": len(noop.actions),
            "add_s": grown.seconds,
            "add_steps": len(grown.actions),
            "added_peers": int(peers),
            "destroy_s": gone.seconds,
        }
    finally:
        engine.close()


HEADER = (
    f"{'servers':>7} {'cold up':>8} {'steps':>6} {'no-op':>7} {'steps':>6} {'add 1':>7} {'steps':>6} {'destroy':>8}"
)


def row_line(r: dict[str, Any]) -> str:
    return (
        f"{r['servers']:>7} {r['cold_s']:>7.1f}s {r['cold_steps']:>6} {r['noop_s']:>6.1f}s {r['noop_steps']:>6}"
        f" {r['add_s']:>6.1f}s {r['add_steps']:>6} {r['destroy_s']:>7.1f}s"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="3,8,16")
    parser.add_argument("--keep-lab", action="store_true", help="leave the lab hosts up afterwards")
    args = parser.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(",") if x)
    lab = Lab(sizes[-1] + 1)
    rows: list[dict[str, Any]] = []
    try:
        pinned = host_keys(lab, sizes[-1] + 1)
        for n in sizes:
            # Each row as it is measured: a failure at a larger size keeps the smaller ones.
            rows.append(measure(lab, n, pinned))
            if len(rows) == 1:
                print(f"engine path: {rows[0]['path']}\n{HEADER}", flush=True)
            print(row_line(rows[-1]), flush=True)
    finally:
        if not args.keep_lab:
            lab.down()
    for a, b in zip(rows, rows[1:], strict=False):
        added = b["servers"] - a["servers"]
        growth = {key: (b[key] - a[key]) / added for key in ("cold_s", "noop_s", "add_s", "destroy_s")}
        print(
            f"growth {a['servers']}->{b['servers']}: cold up {growth['cold_s']:+.2f} s, no-op {growth['noop_s']:+.2f} s,"
            f" add one {growth['add_s']:+.2f} s, destroy {growth['destroy_s']:+.2f} s per added server"
        )
    print(json.dumps(rows))
    bad = [r["servers"] for r in rows if r["noop_steps"] or r["added_peers"] != r["servers"]]
    if bad:
        print(f"FAILED at {bad}: a no-op up ran steps, or the added server does not have every peer", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
