"""The program at scale: N generated servers, nothing contacted.

Two measurements, each size in its own process (clean peak RSS):
- under Pulumi mocks (`tests/program.py`): evaluation time and peak memory of the program alone;
- with the real Pulumi CLI, when it and the `command` plugin are installed: `pulumi preview` of a
  generated stack (servers on loopback addresses; a preview runs no command), wall time, peak RSS
  of the `pulumi` process tree, resource count, and the size the state would have: the preview's
  new states, as `pulumi stack export` would write them.

    .venv/bin/python bench/program.py [--sizes 32,128,256] [--real-sizes 64,256]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.engines import _env, real_engine  # noqa: E402
from tests.harness import pulumi_bin_dir  # noqa: E402

FAKE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "b3BlbnNzaC1rZXktdjEAAAAA" * 16 + "\n-----END OPENSSH PRIVATE KEY-----\n"


def stack_config(n: int, binary: Path) -> dict[str, Any]:
    return {
        "servers": [
            {"name": f"s{i}", "host": f"127.0.{1 + i // 250}.{i % 250 + 1}", "index": i,
             "endpoint": f"198.51.{i // 250}.{i % 250 + 1}"}
            for i in range(n)
        ],  # fmt: skip
        # Nothing is contacted, so there is no host key to pin.
        "allow_unpinned_host_keys": True,
        "container_engine": "docker",
        "corrosion_local_path": str(binary),
    }


def fake_binary() -> Path:
    binary = Path(tempfile.mkdtemp(prefix="jiji-bench-")) / "corrosion"
    binary.write_bytes(b"not really corrosion")
    return binary


def measure_mocks(n: int) -> dict[str, float]:
    from tests.program import evaluate

    binary = fake_binary()
    config = {**stack_config(n, binary), "ssh_private_key": FAKE_KEY}
    started = time.perf_counter()
    result = evaluate(config)
    seconds = time.perf_counter() - started
    shutil.rmtree(binary.parent)
    return {
        "servers": n,
        "resources": len(result.resources),
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure_real(n: int) -> dict[str, float]:
    """`pulumi preview` of an n-server stack on a throwaway local backend."""
    work = Path(tempfile.mkdtemp(prefix="jiji-bench-real-"))
    binary = fake_binary()
    try:
        (work / "state").mkdir()
        env = _env(work / "state")
        config_file = work / "Pulumi.bench.yaml"
        pulumi = str(pulumi_bin_dir() / "pulumi")
        base = [pulumi, "--cwd", str(REPO), "--non-interactive", "--stack", "bench"]
        subprocess.run([*base, "stack", "init"], env=env, check=True, capture_output=True)
        values = {f"jiji-net:{k}": v for k, v in stack_config(n, binary).items()}
        config_file.write_text(json.dumps({"config": values}))
        subprocess.run([*base, "config", "set", "--secret", "ssh_private_key", "--config-file", str(config_file)],
                       input=FAKE_KEY, text=True, env=env, check=True, capture_output=True)  # fmt: skip
        started = time.perf_counter()
        # RUSAGE_CHILDREN after the wait: the peak RSS of the largest process of the tree.
        out = subprocess.run([*base, "preview", "--json", "--config-file", str(config_file)],
                             env=env, capture_output=True, text=True, timeout=1800)  # fmt: skip
        seconds = time.perf_counter() - started
        if out.returncode != 0:
            raise RuntimeError(out.stdout[-2000:] + out.stderr[-2000:])
        preview = json.loads(out.stdout)
        states = [s["newState"] for s in preview["steps"] if s.get("newState")]
        # Each new state holds the inputs and the outputs (which for pulumi-command repeat the
        # inputs), as a checkpoint does; secrets are shown in the clear here, a little smaller than
        # their ciphertext in a real checkpoint.
        state_bytes = sum(len(json.dumps(s)) for s in states)
        return {
            "servers": n,
            "resources": len(states),
            "seconds": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "state_mb": state_bytes / 2**20,
        }
    finally:
        subprocess.run([pulumi, "--cwd", str(REPO), "stack", "rm", "--yes", "--force", "--stack", "bench", "--non-interactive"],
                       env=env, capture_output=True)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(binary.parent, ignore_errors=True)
        shutil.rmtree(REPO / "build" / "stacks" / "bench", ignore_errors=True)


def run_one(kind: str, n: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-W", "ignore", __file__, f"--{kind}-one", str(n)],
                         capture_output=True, text=True, timeout=2400)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="32,128,256")
    parser.add_argument("--real-sizes", default="64,256")
    parser.add_argument("--mocks-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--real-one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mocks_one:
        print(json.dumps(measure_mocks(args.mocks_one)))
        return 0
    if args.real_one:
        print(json.dumps(measure_real(args.real_one)))
        return 0
    print("under mocks (the program alone):")
    print(f"{'servers':>7} {'resources':>9} {'per server':>10} {'seconds':>8} {'peak MB':>8}")
    for n in (int(x) for x in args.sizes.split(",") if x):
        r = run_one("mocks", n)
        print(f"{n:>7} {r['resources']:>9} {r['resources'] / n:>10.1f} {r['seconds']:>8.1f} {r['peak_rss_mb']:>8.0f}")
    real = real_engine()
    if not real or os.environ.get("JIJI_ENGINE") == "stand-in":
        print("real engine: not installed (pulumi-language-python and the command plugin); skipped")
        return 0
    print(f"`pulumi preview` with the {real}:")
    print(f"{'servers':>7} {'resources':>9} {'seconds':>8} {'peak MB':>8} {'state MB':>9}")
    for n in (int(x) for x in args.real_sizes.split(",") if x):
        r = run_one("real", n)
        print(f"{n:>7} {r['resources']:>9} {r['seconds']:>8.1f} {r['peak_rss_mb']:>8.0f} {r['state_mb']:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
