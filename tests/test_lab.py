"""The lab comes up and goes away, twice, leaving nothing behind (needs root and systemd-nspawn)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests import harness

LAB = harness.REPO / "lab" / "lab.sh"


def sh(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(LAB), *args], capture_output=True, text=True, timeout=timeout)


def leftovers() -> dict[str, str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    procs = subprocess.run(["pgrep", "-af", "systemd-nspawn|jiji-lab"], capture_output=True, text=True).stdout
    mounts = Path("/proc/mounts").read_text()
    return {
        "netns": " ".join(line.split()[0] for line in netns.splitlines() if "jiji-lab" in line),
        "links": " ".join(
            line.split(":")[1].strip() for line in links.splitlines() if "jl-" in line or "jiji-lab" in line
        ),
        "processes": procs.strip(),
        "mounts": " ".join(line.split()[1] for line in mounts.splitlines() if "/.lab/" in line),
    }


@pytest.fixture(scope="module", autouse=True)
def no_lab_running() -> None:
    if os.geteuid() != 0:
        pytest.fail("the lab needs root: run the tests as root (CI does)")
    if any(leftovers().values()):
        pytest.fail(f"a lab is already up here ({leftovers()}): run `lab/lab.sh down` first")


def test_lab_up_and_down_twice_leaves_nothing() -> None:
    for _ in range(2):
        up = sh("up", "2")
        assert up.returncode == 0, up.stderr
        assert "host 1: ssh ready" in up.stderr
        try:
            ids = {sh("ssh", str(i), "cat /etc/machine-id").stdout.strip() for i in range(2)}
            assert len(ids) == 2, "each host has its own machine-id"
            keys = {sh("ssh", str(i), "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1] for i in range(2)}
            assert len(keys) == 2, "each host has its own SSH host key"
            peer = sh("ssh", "0", "ping -c1 -W2 198.18.0.11 >/dev/null && echo reachable")
            assert peer.stdout.strip() == "reachable"
            assert sh("ssh", "0", "dig +short www.lab.test").stdout.strip() == "198.18.0.200"
            outside = sh("ssh", "1", "ip route get 192.0.2.1 2>&1 || true")
            assert "unreachable" in outside.stdout, "lab hosts have no route out of the lab"
            wg = sh(
                "ssh",
                "1",
                "umask 077; wg genkey >/tmp/k; printf '[Interface]\\nAddress = 10.99.0.1/24\\n"
                "PostUp = wg set %%i private-key /tmp/k\\n' >/etc/wireguard/t0.conf;"
                " wg-quick up t0 >/dev/null 2>&1 && wg show t0 public-key; wg-quick down t0 >/dev/null 2>&1",
            )
            assert len(wg.stdout.strip()) == 44, f"userspace WireGuard came up: {wg.stdout} {wg.stderr}"
        finally:
            down = sh("down")
        assert down.returncode == 0, down.stderr
        assert leftovers() == {"netns": "", "links": "", "processes": "", "mounts": ""}
