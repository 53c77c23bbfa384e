from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import harness

# How long a first packet to a new peer may wait for its answer: WireGuard sends one initiation per
# REKEY_TIMEOUT (5 s, plus up to 1/3 s of jitter). When a daemon's traffic (Corrosion's gossip) set
# off an initiation before the peer's interface was up, that one is lost and a ping queued behind
# it goes out with the retransmit.
FIRST_PACKET_WAIT = 7

sys.path.insert(0, str(harness.REPO / "hostbin"))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A test that did not run is no pass: any skip (or xfail) makes the run fail, so `make test`
    is never green with parts of it left out. Each is listed by the summary below."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or exitstatus != 0:
        return
    if reporter.stats.get("skipped") or reporter.stats.get("xfailed"):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    _print_lab_lines(terminalreporter)
    left_out = terminalreporter.stats.get("skipped", []) + terminalreporter.stats.get("xfailed", [])
    if left_out:
        terminalreporter.section("did not run, so the run fails", red=True, bold=True)
        for report in left_out:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            terminalreporter.line(f"{report.nodeid}: {reason}", red=True)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jiji")


@pytest.fixture(scope="session")
def pyz(workdir: Path) -> Path:
    out = workdir / "jiji-dns.pyz"
    subprocess.run(
        [sys.executable, "-m", "jiji_net.zipapps", "dns", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out


@pytest.fixture(scope="session")
def tool(workdir: Path) -> Path:
    """jiji-net.pyz, the host tool, built once for every test that runs it."""
    out = workdir / "jiji-net.pyz"
    subprocess.run(
        [sys.executable, "-m", "jiji_net.zipapps", "tool", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out


@pytest.fixture(scope="session")
def upstream(workdir: Path) -> Iterator[harness.Dnsmasq]:
    server = harness.Dnsmasq(workdir, {"www.upstream.test": "198.51.100.7", "api.upstream.test": "198.51.100.8"})
    yield server
    server.close()


@pytest.fixture(scope="session")
def corrosion(workdir: Path) -> Iterator[harness.CorrosionNode]:
    node = harness.CorrosionNode(workdir / "corrosion-shared")
    yield node
    node.close()


@pytest.fixture(scope="session")
def daemon(
    pyz: Path, workdir: Path, corrosion: harness.CorrosionNode, upstream: harness.Dnsmasq
) -> Iterator[harness.DnsDaemon]:
    d = harness.DnsDaemon(
        pyz, workdir, corrosion.api, upstreams=[upstream.address], extra=["--recursion-from", "127.0.0.0/8"]
    )
    d.wait_ready()
    yield d
    d.close()


@dataclass
class DigResult:
    status: str
    flags: set[str]
    answers: list[tuple[str, str, str]]  # (name, type, data)
    authority: list[tuple[str, str, str]]
    edns_udp: int | None
    raw: str


def dig(port: int, name: str, qtype: str = "A", *options: str, server: str = "127.0.0.1") -> DigResult:
    """Ask with the real `dig` and parse its presentation output."""
    out = subprocess.run(
        ["dig", f"@{server}", "-p", str(port), "+tries=1", "+time=3", "+nocookie", name, qtype, *options],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    status = re.search(r"status: (\w+)", out)
    flags = re.search(r";; flags: ([a-z ]*);", out)
    edns = re.search(r"udp: (\d+)", out)
    sections: dict[str, list[tuple[str, str, str]]] = {"ANSWER": [], "AUTHORITY": []}
    current = None
    for line in out.splitlines():
        header = re.match(r";; (\w+) SECTION:", line)
        if header:
            current = header.group(1)
            continue
        if not line.strip() or line.startswith(";"):
            if not line.strip():
                current = None
            continue
        if current in sections:
            parts = line.split(None, 4)
            sections[current].append((parts[0].lower(), parts[3], parts[4] if len(parts) > 4 else ""))
    return DigResult(
        status=status.group(1) if status else "NO-REPLY",
        flags=set(flags.group(1).split()) if flags else set(),
        answers=sections["ANSWER"],
        authority=sections["AUTHORITY"],
        edns_udp=int(edns.group(1)) if edns else None,
        raw=out,
    )


class Lab:
    """The lab hosts, up for one test module; commands run over SSH with the lab's key."""

    script = harness.REPO / "lab" / "lab.sh"

    def __init__(self, hosts: int, containers: bool = False) -> None:
        """`containers`: hosts that can run podman containers (lab/lab.sh, JIJI_LAB_CONTAINERS)."""
        self.hosts = hosts
        env = {**os.environ, "JIJI_LAB_CONTAINERS": "1" if containers else "0"}
        up = subprocess.run(
            ["bash", str(self.script), "up", str(hosts)], capture_output=True, text=True, timeout=900, env=env
        )
        if up.returncode != 0:
            # Whatever came up goes down again, or every later module finds it half-running.
            self.down(check=False)
            raise RuntimeError(f"lab up failed:\n{up.stderr}")

    def ip(self, i: int) -> str:
        return f"198.18.0.{10 + i}"

    def run(self, i: int, command: str, stdin: str | bytes = b"", check: bool = True) -> str:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        out = subprocess.run(
            ["bash", str(self.script), "ssh", str(i), command], input=data, capture_output=True, timeout=120
        )
        if check and out.returncode != 0:
            raise RuntimeError(
                f"host {i}: {command!r} failed ({out.returncode}): {out.stderr.decode(errors='replace')}"
            )
        return out.stdout.decode(errors="replace")

    def pings(self, i: int, address: str, netns: str = "", wait: int = 2) -> bool:
        """One ping from host i (inside `netns` when given) gets its answer within `wait` s."""
        prefix = f"ip netns exec {netns} " if netns else ""
        return self.run(i, f"{prefix}ping -c1 -W{wait} {address} >/dev/null && echo ok", check=False).strip() == "ok"

    def handshakes(self, i: int) -> dict[str, int]:
        """Host i's jiji0 peers: public key -> latest handshake (Unix seconds, 0 = never)."""
        lines = self.run(i, "wg show jiji0 latest-handshakes").splitlines()
        return {k: int(v) for k, v in (line.split() for line in lines)}

    def down(self, check: bool = True) -> None:
        subprocess.run(["bash", str(self.script), "down"], capture_output=True, text=True, timeout=300, check=check)


def module_lab(hosts: int, containers: bool = False) -> Iterator[Lab]:
    """A lab for one test module (the body of its fixture), down again when the module is done."""
    if os.geteuid() != 0:
        pytest.fail("the lab needs root: run the tests as root (CI does)")
    instance = Lab(hosts, containers)
    yield instance
    instance.down()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    # Per module, not per session: tests/test_lab.py brings the same lab up and down itself.
    yield from module_lab(3)


# What the lab tests print (the engine and provider that ran, heal times, latencies) is captured
# by pytest and shown only for failures; CI keeps only what is printed, so the lines of passing
# lab tests are printed again at the end of the run.
_LAB_LINES: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    is_lab = "_on_lab" in report.nodeid or "test_lab.py" in report.nodeid
    if report.when == "call" and report.passed and is_lab:
        lines = [line for line in report.capstdout.splitlines() if line.strip()]
        if lines:
            _LAB_LINES.append((report.nodeid, "\n".join(lines)))


def _print_lab_lines(terminalreporter: Any) -> None:
    if not _LAB_LINES:
        return
    terminalreporter.section("what the lab tests printed")
    for nodeid, text in _LAB_LINES:
        terminalreporter.write_line(f"{nodeid}:")
        for line in text.splitlines():
            terminalreporter.write_line(f"    {line}")
