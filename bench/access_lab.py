"""10,000 declared access peers deployed for real on 3 lab hosts (issue 21): `up` with them, every
server's registry holding them and no kernel loading any, jiji-jit's idle CPU with that table, and
`pulumi preview --diff` of a 10,001st showing only the registry step. A bench, not a test: the
deploy takes a minute and a half, and what it shows of the program (the 10,001st changes only the
registry step) `tests/test_program.py` checks under mocks in every `make test`.

    .venv/bin/python bench/access_lab.py          (make bench-access-lab; needs root)
"""

from __future__ import annotations

import base64
import hashlib
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import Lab  # noqa: E402
from tests.engines import make_engine  # noqa: E402
from tests.harness import corrosion_binary, wait_until  # noqa: E402
from tests.test_mesh_on_lab import REPLICATED, config  # noqa: E402

PEERS = 10_000


def many_peers(n: int) -> list[dict[str, str]]:
    """n access peers with well-formed keys no machine holds."""
    return [
        {"name": f"peer-{i}", "public_key": base64.b64encode(hashlib.sha256(f"lab-peer-{i}".encode()).digest()).decode()}
        for i in range(n)
    ]


def kernel_peers(lab: Lab, i: int) -> set[str]:
    return set(lab.run(i, "wg show jiji0 peers").split())


def main() -> int:
    corrosion_binary()
    lab = Lab(3)
    engine = make_engine("bench-access-10k")
    try:
        up = engine.up(config(lab, 3, access_enabled=True, access_peers=many_peers(PEERS)))
        print(f"up with {PEERS:,} access peers: {up.seconds:.1f} s")
        for i in range(3):
            wait_until(lambda i=i: f'"access_peers": {PEERS}' in lab.run(i, "jiji-net --json db stats"), REPLICATED, f"lab{i} rows")
            loaded = len(kernel_peers(lab, i)) - 2
            print(f"lab{i}: {PEERS:,} rows in the registry, {loaded} access peers in the kernel")
            assert loaded == 0, "an access peer was loaded into the kernel"
        # What the idle daemon costs with the table: its CPU over 20 s (nothing changes: the
        # fingerprint of the table is all it reads).
        cpu = 'pid=$(systemctl show -p MainPID --value jiji-jit); awk "{print \\$14 + \\$15}" /proc/$pid/stat'
        ticks = int(lab.run(0, "getconf CLK_TCK"))
        before = int(lab.run(0, cpu))
        time.sleep(20)
        used = (int(lab.run(0, cpu)) - before) / ticks
        print(f"jiji-jit on lab0 with {PEERS:,} peers, nothing changing: {used:.2f} s of CPU in 20 s ({used / 20:.1%} of a core)")
        preview = engine.up(config(lab, 3, access_enabled=True, access_peers=many_peers(PEERS + 1)), preview=True)
        changed = sorted({name for op, name in preview.actions if op != "same"})
        print(f"preview --diff of the {PEERS + 1:,}th: {preview.seconds:.1f} s, changes {changed}")
        assert changed == ["jiji-registry"], preview.actions
    finally:
        try:
            engine.destroy()
        finally:
            engine.close()
            lab.down(check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
