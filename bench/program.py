"""The program at scale: N generated servers, nothing contacted.

Two measurements, each size in its own process (clean peak RSS):
- under Pulumi mocks (`tests/program.py`): evaluation time and peak memory of the program alone;
- with the real Pulumi CLI: `python -m deploy preview` of a generated stack (servers on loopback
  addresses; a preview runs no command), wall time, peak RSS of the largest process of the tree
  and of the `command` provider's process, once with our provider and, where the official plugin
  is installed in PULUMI_HOME, once with it, alternating, in the same run: the ratio is ours over
  theirs.

    .venv/bin/python bench/program.py [--sizes 32,128,256] [--real-sizes 64,256] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
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

from deploy import toolchain  # noqa: E402

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


def measure_real(n: int, provider: str) -> dict[str, float]:
    """`python -m deploy preview` of an n-server stack on a throwaway local backend, with the
    `command` provider `provider` (jiji or official)."""
    work = toolchain.project_dir(Path(tempfile.mkdtemp(prefix="jiji-bench-real-")))
    binary = fake_binary()
    env = {**os.environ, "JIJI_COMMAND_PROVIDER": provider, "PULUMI_CONFIG_PASSPHRASE": ""}
    deploy = [sys.executable, "-m", "deploy", "--stack", "bench", "--dir", str(work), "--backend", f"file://{work}/state"]
    try:
        (work / "state").mkdir()
        subprocess.run([*deploy, "pulumi", "--", "stack", "init"], env=env, check=True, capture_output=True, cwd=REPO)
        values = {f"jiji-net:{k}": v for k, v in stack_config(n, binary).items()}
        config_file = work / "Pulumi.bench.yaml"
        salt = config_file.read_text() if config_file.exists() else ""
        config_file.write_text(salt + json.dumps({"config": values}) if not salt else _with_config(salt, values))
        subprocess.run([*deploy, "pulumi", "--", "config", "set", "--secret", "ssh_private_key"],
                       input=FAKE_KEY, text=True, env=env, check=True, capture_output=True, cwd=REPO)  # fmt: skip
        log = work / "preview.log"
        started = time.perf_counter()
        with open(log, "w") as sink:  # a file, not a pipe: nobody reads a pipe while we poll
            proc = subprocess.Popen([*deploy, "preview"], env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
            provider_peak_kb = 0
            while proc.poll() is None:
                provider_peak_kb = max(provider_peak_kb, _provider_hwm_kb())
                time.sleep(0.1)
        seconds = time.perf_counter() - started
        out = log.read_text()
        if proc.returncode != 0:
            raise RuntimeError(out[-4000:])
        created = re.search(r"\+ (\d+) to create", out)
        resources = int(created.group(1)) if created else 0
        return {
            "servers": n,
            "resources": resources,
            "seconds": seconds,
            # RUSAGE_CHILDREN after the wait: the peak RSS of the largest process of the tree.
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "provider_mb": provider_peak_kb / 1024,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(binary.parent, ignore_errors=True)
        shutil.rmtree(REPO / "build" / "stacks" / "bench", ignore_errors=True)


def _with_config(text: str, values: dict[str, Any]) -> str:
    import yaml

    current = yaml.safe_load(text) or {}
    return json.dumps({**current, "config": values})


def _provider_hwm_kb() -> int:
    """The peak RSS (VmHWM) of the running `command` provider process, ours or the official one."""
    peak = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"command_provider" not in cmdline and b"pulumi-resource-command" not in cmdline:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return peak


def run_one(kind: str, n: int, provider: str = "") -> dict[str, float]:
    extra = ["--provider", provider] if provider else []
    out = subprocess.run([sys.executable, "-W", "ignore", __file__, f"--{kind}-one", str(n), *extra],
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
    parser.add_argument("--provider", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs of each provider per size")
    args = parser.parse_args()
    if args.mocks_one:
        print(json.dumps(measure_mocks(args.mocks_one)))
        return 0
    if args.real_one:
        print(json.dumps(measure_real(args.real_one, args.provider)))
        return 0
    print("under mocks (the program alone):")
    print(f"{'servers':>7} {'resources':>9} {'per server':>10} {'seconds':>8} {'peak MB':>8}")
    for n in (int(x) for x in args.sizes.split(",") if x):
        r = run_one("mocks", n)
        print(f"{n:>7} {r['resources']:>9} {r['resources'] / n:>10.1f} {r['seconds']:>8.1f} {r['peak_rss_mb']:>8.0f}")
    official = toolchain.plugin_file(toolchain.user_home()).exists()
    providers = ["jiji", "official"] if official else ["jiji"]
    print(f"`python -m deploy preview` (real CLI, Automation API), providers: {', '.join(providers)}"
          + ("" if official else f" (no official plugin in {toolchain.user_home()})"))
    print(f"{'servers':>7} {'provider':>9} {'resources':>9} {'seconds':>8} {'tree MB':>8} {'provider MB':>11}")
    for n in (int(x) for x in args.real_sizes.split(",") if x):
        runs: dict[str, list[dict[str, float]]] = {p: [] for p in providers}
        for _ in range(args.rounds):
            for p in providers:
                r = run_one("real", n, p)
                runs[p].append(r)
                print(f"{n:>7} {p:>9} {r['resources']:>9} {r['seconds']:>8.1f} {r['peak_rss_mb']:>8.0f} {r['provider_mb']:>11.0f}")
        if official:
            ours, theirs = runs["jiji"], runs["official"]
            t = sum(r["seconds"] for r in ours) / sum(r["seconds"] for r in theirs)
            m = max(r["peak_rss_mb"] for r in ours) / max(r["peak_rss_mb"] for r in theirs)
            pm = max(r["provider_mb"] for r in ours) / max(r["provider_mb"] for r in theirs)
            print(f"{n:>7} ours/official: time {t:.2f}x, tree peak {m:.2f}x, provider peak {pm:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
