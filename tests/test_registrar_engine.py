"""The registrar as servers run it (the built jiji-net.pyz), against a real Corrosion node on
loopback and a stand-in `podman` on PATH whose containers, events and failures the test controls.

The stand-in answers exactly the commands the registrar gives podman 4.3 (anything else fails as
an unknown command would): `events --format json --filter type=container` prints lines appended
to a file, `ps -a -q --no-trunc --filter label=jiji.service` and `container inspect ID...` answer
from one inspect JSON file per container, made from the podman 4.3 samples in tests/recorded.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import harness

pytestmark = pytest.mark.corrosion

RECORDED = Path(__file__).parent / "recorded" / "registrar"
SERVER, SUBNET = "lab0", "10.210.0.0/24"

FAKE_PODMAN = r"""
import json, os, sys, time
from pathlib import Path

state = Path(os.environ["FAKE_ENGINE_STATE"])
args = sys.argv[1:]
with open(state / "calls.log", "a") as f:
    f.write(json.dumps(args) + "\n")
if (state / "down").exists():
    print("Error: unable to connect to Podman socket: connection refused", file=sys.stderr)
    sys.exit(125)


def containers():
    return {p.stem: json.loads(p.read_text()) for p in sorted((state / "containers").glob("*.json"))}


if args == ["events", "--format", "json", "--filter", "type=container"]:
    with open(state / "events.pids", "a") as f:
        f.write(f"{os.getpid()}\n")
    with open(state / "events.times", "a") as f:  # CLOCK_MONOTONIC: the same in every process
        f.write(f"start {time.monotonic()}\n")
    log, offset_file = state / "events.ndjson", state / "events.offset"
    offset = int(offset_file.read_text()) if offset_file.exists() else 0
    while True:
        with open(log) as f:
            f.seek(offset)
            while (line := f.readline()).endswith("\n"):
                offset = f.tell()
                offset_file.write_text(str(offset))
                if line.startswith("EXIT "):  # the stream breaks, as when the engine restarts
                    with open(state / "events.times", "a") as f:
                        f.write(f"exit {time.monotonic()}\n")
                    sys.exit(int(line.split()[1]))
                sys.stdout.write(line)
                sys.stdout.flush()
        time.sleep(0.01)
elif args == ["ps", "-a", "-q", "--no-trunc", "--filter", "label=jiji.service"]:
    for cid, c in containers().items():
        if "jiji.service" in (c["Config"].get("Labels") or {}):
            print(cid)
elif args[:2] == ["container", "inspect"] and len(args) > 2:
    have = containers()
    found = [have[cid] for cid in args[2:] if cid in have]
    print(json.dumps(found, indent=5))
    missing = [cid for cid in args[2:] if cid not in have]
    for cid in missing:
        print(f'Error: no such container "{cid}"', file=sys.stderr)
    sys.exit(125 if missing else 0)
else:
    print(f"Error: unrecognized command `podman {' '.join(args)}`", file=sys.stderr)
    sys.exit(125)
"""


class FakePodman:
    """The stand-in's state directory, and helpers that change it like podman would."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.state = root / "state"
        for d in (self.bin, self.state / "containers"):
            d.mkdir(parents=True)
        (self.state / "events.ndjson").write_text("")
        script = self.bin / "podman"
        script.write_text(f"#!{sys.executable}\n{FAKE_PODMAN}")
        script.chmod(0o755)
        self.template = json.loads((RECORDED / "podman-4.3-inspect-healthy.json").read_text())[0]
        self.event_template = json.loads((RECORDED / "podman-4.3-events.ndjson").read_text().splitlines()[2])

    def run(
        self, cid: str, ip: str, service: str = "api", health: str | None = "starting", instance: str | None = None
    ) -> None:
        """A container on the jiji network, running; health None = no health check."""
        c = json.loads(json.dumps(self.template).replace(self.template["Id"], cid))
        c["Name"] = f"myapp-{service}-{cid[:4]}"
        c["State"]["StartedAt"] = "2026-12-02T04:10:00.412734913Z"
        c["State"]["Health"] = {"Status": health or "", "FailingStreak": 0, "Log": None}
        c["Config"]["Labels"] = {"jiji.project": "myapp", "jiji.service": service}
        if instance:
            c["Config"]["Labels"]["jiji.instance"] = instance
        c["NetworkSettings"]["Networks"]["jiji"]["IPAddress"] = ip
        self.write(c)
        self.event(cid, "start")

    def read(self, cid: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state / "containers" / f"{cid}.json").read_text())
        return data

    def write(self, c: dict[str, Any]) -> None:
        tmp = self.state / "containers" / f".{c['Id']}.tmp"
        tmp.write_text(json.dumps(c))
        tmp.rename(self.state / "containers" / f"{c['Id']}.json")

    def health(self, cid: str, status: str, event: bool = True) -> None:
        c = self.read(cid)
        c["State"]["Health"]["Status"] = status
        self.write(c)
        if event:
            self.event(cid, "health_status", HealthStatus=status)

    def stop(self, cid: str, event: bool = True) -> None:
        c = self.read(cid)
        c["State"].update(Status="exited", Running=False, Pid=0, ExitCode=143)
        c["NetworkSettings"]["Networks"]["jiji"]["IPAddress"] = ""
        self.write(c)
        if event:
            self.event(cid, "died", ContainerExitCode=143)

    def remove(self, cid: str, event: bool = True) -> None:
        labels = self.read(cid)["Config"]["Labels"]
        (self.state / "containers" / f"{cid}.json").unlink()
        if event:
            self.event(cid, "remove", labels=labels)

    def event(self, cid: str, status: str, labels: dict[str, str] | None = None, **extra: Any) -> None:
        e = copy.deepcopy(self.event_template)
        if labels is None:
            labels = self.read(cid)["Config"]["Labels"]
        e.update(ID=cid, Status=status, **extra)
        e["Attributes"] = {"image": e["Image"], "name": f"c-{cid[:4]}", **labels}
        self.append(json.dumps(e))

    def append(self, line: str) -> None:
        with open(self.state / "events.ndjson", "a") as f:
            f.write(line + "\n")

    def events_times(self) -> list[tuple[str, float]]:
        """("start" or "exit", monotonic seconds) of every `events` stand-in, in order."""
        path = self.state / "events.times"
        lines = path.read_text().splitlines() if path.exists() else []
        return [(kind, float(t)) for kind, t in (line.split() for line in lines)]

    def events_pids(self) -> list[int]:
        path = self.state / "events.pids"
        return [int(line) for line in path.read_text().split()] if path.exists() else []

    def close(self) -> None:
        """Ends every `events` stand-in still running (one outliving a killed registrar)."""
        for pid in self.events_pids():
            try:
                if str(self.bin) in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(pid, signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in (self.state / "calls.log").read_text().splitlines()]


class Registrar:
    """`python3 jiji-net.pyz registrar` with its log in a file; stopped by its pid."""

    def __init__(self, tool: Path, host_config: Path, fake: FakePodman, log: Path, *extra: str) -> None:
        self.log_path = log
        env = dict(os.environ, PATH=f"{fake.bin}:{os.environ['PATH']}", FAKE_ENGINE_STATE=str(fake.state))
        out = open(log, "ab")
        argv = [sys.executable, str(tool), "--host-config", str(host_config), "registrar", *extra]
        self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        out.close()

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, text: str, timeout: float = 10, count: int = 1) -> None:
        harness.wait_until(
            lambda: self.log().count(text) >= count, timeout, f"{text!r} x{count} in the registrar's log"
        )

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def cid(n: int) -> str:
    return f"{n:02d}" + "ab5e" * 15 + "c0"  # 64 hex digits, like an engine's ids


@pytest.fixture(scope="module")
def node(workdir: Path) -> Iterator[harness.CorrosionNode]:
    n = harness.CorrosionNode(workdir / "corrosion-registrar")
    yield n
    n.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakePodman]:
    f = FakePodman(tmp_path / "podman")
    yield f
    f.close()


@pytest.fixture
def registry(node: harness.CorrosionNode) -> Iterator[harness.CorrosionNode]:
    """The node with empty tables and one container row of another server, which must survive."""
    node.execute("DELETE FROM containers", "DELETE FROM services")
    node.add_container("other-server-row", "myapp", "api", "lab2", "10.210.2.2", 1, "lab2")
    yield node
    assert node.query("SELECT id, server_id, ip FROM containers WHERE server_id = 'lab2'") == [
        ["other-server-row", "lab2", "10.210.2.2"]
    ]


def host_config(directory: Path, api: str, engine: str = "podman") -> Path:
    path = directory / "host.json"
    path.write_text(
        json.dumps(
            {
                "server": SERVER,
                "mesh_address": "10.210.0.1",
                "subnet": SUBNET,
                "container_engine": engine,
                "domain": "jiji",
                "corrosion_api": api,
            }
        )  # fmt: skip
    )
    return path


@pytest.fixture
def start(tool: Path, fake: FakePodman, registry: harness.CorrosionNode, tmp_path: Path) -> Iterator[Any]:
    started: list[Registrar] = []

    def run(*extra: str, api: str | None = None) -> Registrar:
        r = Registrar(
            tool, host_config(tmp_path, api or registry.api), fake, tmp_path / f"registrar-{len(started)}.log", *extra
        )
        started.append(r)
        return r

    yield run
    for r in started:
        r.close()


def rows(node: harness.CorrosionNode) -> dict[str, tuple[str, str, str]]:
    """This server's rows: id -> (service, ip, health)."""
    found = node.query("SELECT id, service, ip, health_status FROM containers WHERE server_id = ?", [SERVER])
    return {r[0]: (r[1], r[2], r[3]) for r in found}


def eventually(node: harness.CorrosionNode, expected: dict[str, tuple[str, str, str]], timeout: float = 5) -> float:
    """Waits for this server's rows to be `expected`; seconds it took."""
    began = time.monotonic()
    harness.wait_until(lambda: rows(node) == expected, timeout, f"rows {expected}", interval=0.02)
    return time.monotonic() - began


def test_events_drive_rows_through_a_containers_life(
    fake: FakePodman, registry: harness.CorrosionNode, start: Any
) -> None:
    # A long interval: every change below must come from an event, not from a periodic reconcile.
    r = start("--reconcile-interval", "300")
    r.wait_log("event=reconciled")
    a = cid(1)
    fake.run(a, "10.210.0.5")
    eventually(registry, {a: ("api", "10.210.0.5", "unknown")})
    assert registry.query("SELECT project, name FROM services WHERE name = 'api'") == [["myapp", "api"]]
    assert registry.query("SELECT instance_id, started_at FROM containers WHERE id = ?", [a]) == [
        ["lab0", 1796184600412]
    ]
    fake.health(a, "healthy")
    eventually(registry, {a: ("api", "10.210.0.5", "healthy")})
    fake.append("this is not an event")
    fake.append('{"Type": "container", "Status": "start"}')
    fake.health(a, "unhealthy")
    eventually(registry, {a: ("api", "10.210.0.5", "unhealthy")})
    fake.health(a, "healthy")
    b = cid(2)
    fake.run(b, "10.210.0.6", service="web", health=None, instance="green")
    eventually(registry, {a: ("api", "10.210.0.5", "healthy"), b: ("web", "10.210.0.6", "healthy")})
    assert registry.query("SELECT instance_id FROM containers WHERE id = ?", [b]) == [["green"]]
    fake.stop(a)
    eventually(registry, {b: ("web", "10.210.0.6", "healthy")})
    fake.remove(b)
    eventually(registry, {})
    log = r.log()
    assert log.count("event=malformed_event") == 2 and 'line="this is not an event"' in log
    assert log.count("event=reconciled") == 1  # once the event stream was open, then events only
    assert r.proc.poll() is None


def test_a_stopped_registrar_catches_up_on_start(fake: FakePodman, registry: harness.CorrosionNode, start: Any) -> None:
    a, b, c = cid(1), cid(2), cid(3)
    fake.run(a, "10.210.0.5", health="healthy")
    fake.run(b, "10.210.0.6", health="healthy")
    r = start()
    eventually(registry, {a: ("api", "10.210.0.5", "healthy"), b: ("api", "10.210.0.6", "healthy")})
    began = time.monotonic()
    assert r.terminate() == 0
    # By design the loop sees SIGTERM within 0.5 s; one that missed it would wait out the
    # reconcile interval (30 s here). The bound sits between the two.
    assert time.monotonic() - began < 10
    events_pid = fake.events_pids()[-1]
    harness.wait_until(lambda: not Path(f"/proc/{events_pid}").exists(), 5, "the events process to end with it")
    assert "event=stopped" in r.log()
    # While it is away: one container removed, one unhealthy, one new; no event reaches anyone.
    fake.remove(a, event=False)
    fake.health(b, "unhealthy", event=False)
    fake.run(c, "10.210.0.7", health="healthy")
    fake.stop(c, event=False)
    fake.run(c, "10.210.0.8", health="healthy")
    (fake.state / "events.offset").write_text(str((fake.state / "events.ndjson").stat().st_size))
    assert rows(registry)[a] == ("api", "10.210.0.5", "healthy")
    start()
    eventually(registry, {b: ("api", "10.210.0.6", "unhealthy"), c: ("api", "10.210.0.8", "healthy")})


def test_the_event_stream_breaking_is_restarted_and_the_gap_reconciled(
    fake: FakePodman, registry: harness.CorrosionNode, start: Any
) -> None:
    a, b = cid(1), cid(2)
    fake.run(a, "10.210.0.5", health="healthy")
    r = start("--reconcile-interval", "300")
    eventually(registry, {a: ("api", "10.210.0.5", "healthy")})
    fake.append("EXIT 3")
    r.wait_log("event=events_ended code=3")
    fake.remove(a, event=False)  # during the gap: seen only by the reconcile after the restart
    r.wait_log("event=events_started", count=2)
    eventually(registry, {})
    fake.run(b, "10.210.0.6", health="healthy")  # and events flow again
    eventually(registry, {b: ("api", "10.210.0.6", "healthy")})


def retry_delays(log: str, event: str) -> list[float]:
    """The waits the registrar announced (`retry_in=`, rounded to 0.1 s) on its `event` lines."""
    return [float(m) for m in re.findall(rf"event={event} .*retry_in=([\d.]+)", log)]


def assert_capped_doubling(delays: list[float], cap: float) -> None:
    """1 s, 2 s, 4 s ... up to `cap`, each with up to 25% jitter off (the registrar's Backoff)."""
    for i, delay in enumerate(delays):
        ceiling = min(cap, 2.0**i)
        assert 0.75 * ceiling - 0.05 <= delay <= ceiling + 0.05, (i, delays)


def test_backoff_when_the_event_stream_cannot_stay_up(
    fake: FakePodman, registry: harness.CorrosionNode, start: Any
) -> None:
    # The waits themselves are checked on a fake clock (test_registrar_loop.py); here, that the
    # process uses them: each restart of the stand-in comes at least the announced wait after it
    # ended (lower bounds only, which a slow machine cannot break).
    for _ in range(20):
        fake.append("EXIT 1")
    r = start("--reconcile-interval", "300", "--max-backoff", "2")
    def starts() -> list[float]:
        return [t for kind, t in fake.events_times() if kind == "start"]

    # Four ends and restarts: at most 1 + 2 + 2 + 2 s of waits by design, plus process starts.
    harness.wait_until(lambda: len(starts()) >= 5, 7 + 10, "the fifth start of `podman events`")
    delays = retry_delays(r.log(), "events_ended")
    assert len(delays) >= 4
    assert_capped_doubling(delays[:4], cap=2)
    times = fake.events_times()
    exits = [t for kind, t in times if kind == "exit"]
    started = starts()
    for i in range(4):
        assert started[i + 1] - exits[i] >= delays[i] - 0.05, (i, delays, times)
    assert r.proc.poll() is None


def test_periodic_reconcile_finds_changes_no_event_announced(
    fake: FakePodman, registry: harness.CorrosionNode, start: Any
) -> None:
    a = cid(1)
    fake.run(a, "10.210.0.5", health="healthy")
    start("--reconcile-interval", "1")
    eventually(registry, {a: ("api", "10.210.0.5", "healthy")})
    fake.health(a, "unhealthy", event=False)
    eventually(registry, {a: ("api", "10.210.0.5", "unhealthy")}, timeout=4)
    # a row of this server that no container stands behind (written by hand) is removed too
    registry.add_container("ghost", "myapp", "api", SERVER, "10.210.0.99", 1, SERVER)
    eventually(registry, {a: ("api", "10.210.0.5", "unhealthy")}, timeout=4)


def test_corrosion_away_is_retried_with_backoff_and_nothing_is_lost(
    fake: FakePodman, registry: harness.CorrosionNode, start: Any
) -> None:
    proxy = harness.CuttableProxy(registry.api_port)
    try:
        a, b = cid(1), cid(2)
        fake.run(a, "10.210.0.5", health="healthy")
        r = start("--reconcile-interval", "300", "--max-backoff", "2", api=proxy.address)
        r.wait_log("event=reconciled")
        eventually(registry, {a: ("api", "10.210.0.5", "healthy")})
        proxy.cut()
        fake.stop(a)
        fake.run(b, "10.210.0.6", health="healthy")
        # Three failed attempts: waits of at most 1 + 2 s between them by design.
        r.wait_log("event=retry", count=3, timeout=3 + 10)
        delays = retry_delays(r.log(), "retry")
        assert_capped_doubling(delays, cap=2)
        # ...and waited: each attempt's connection at least the announced wait after the last
        # (lower bounds only, which a slow machine cannot break).
        tried = proxy.refused_at[:3]
        assert all(b - a >= d - 0.05 for a, b, d in zip(tried, tried[1:], delays, strict=False)), (tried, delays)
        assert rows(registry) == {a: ("api", "10.210.0.5", "healthy")}  # nothing written while away
        proxy.restore()
        # The next attempt comes within one --max-backoff (2 s) and writes both changes.
        eventually(registry, {b: ("api", "10.210.0.6", "healthy")}, timeout=2 + 5)
    finally:
        proxy.close()


def test_an_engine_that_does_not_answer_deletes_nothing(
    fake: FakePodman, registry: harness.CorrosionNode, start: Any
) -> None:
    a = cid(1)
    fake.run(a, "10.210.0.5", health="healthy")
    r = start("--reconcile-interval", "1", "--max-backoff", "1")
    eventually(registry, {a: ("api", "10.210.0.5", "healthy")})
    failed = r.log().count("event=retry what=reconcile")
    (fake.state / "down").write_text("")
    # Two periodic reconciles (every 1 s, retried within --max-backoff 1 s) that found the engine
    # down: each logs a retry, and neither may have deleted the row.
    r.wait_log("event=retry what=reconcile", count=failed + 2, timeout=2 + 10)
    assert "unable to connect to Podman socket" in r.log()
    assert rows(registry) == {a: ("api", "10.210.0.5", "healthy")}
    (fake.state / "down").unlink()
    fake.remove(a, event=False)
    eventually(registry, {}, timeout=6)


def test_commands_given_to_the_engine(fake: FakePodman, registry: harness.CorrosionNode, start: Any) -> None:
    a = cid(1)
    fake.run(a, "10.210.0.5", health="healthy")
    r = start("--reconcile-interval", "300")
    eventually(registry, {a: ("api", "10.210.0.5", "healthy")})
    r.terminate()
    kinds = {tuple(c[:2]) for c in fake.calls()}
    assert kinds == {("events", "--format"), ("ps", "-a"), ("container", "inspect")}
    assert "unrecognized" not in r.log()


def test_once_reconciles_and_exits(fake: FakePodman, registry: harness.CorrosionNode, start: Any) -> None:
    a = cid(1)
    fake.run(a, "10.210.0.5", health="healthy")
    r = start("--once")
    assert r.proc.wait(20) == 0
    assert rows(registry) == {a: ("api", "10.210.0.5", "healthy")}
    assert fake.events_pids() == []


@pytest.mark.parametrize(
    ("engine", "message"),
    [("none", "follows docker or podman only"), ("lxc", "follows docker or podman only")],
)
def test_a_configuration_it_cannot_work_with_exits_2(tool: Path, tmp_path: Path, engine: str, message: str) -> None:
    config = host_config(tmp_path, "127.0.0.1:9", engine)
    out = subprocess.run(
        [sys.executable, str(tool), "--host-config", str(config), "registrar"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 2 and message in out.stderr
    out = subprocess.run(
        [sys.executable, str(tool), "--host-config", str(tmp_path / "missing.json"), "registrar"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 2 and "is missing" in out.stderr
