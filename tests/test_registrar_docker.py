"""The registrar with the real docker CLI (28.x, where installed) talking to a stand-in daemon on a
Unix socket (DOCKER_HOST), and a real Corrosion node: the CLI's own parsing of our flags, its
`{{json .}}` re-encoding of events, its label filter and its inspect error texts are the real ones.

The stand-in daemon answers the four API calls the CLI makes for the registrar (_ping, events,
containers/json, containers/{id}/json) from state the test controls, shaped like docker 28's.
"""

from __future__ import annotations

import copy
import http.server
import json
import os
import shutil
import signal
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import harness
from tests.test_registrar_engine import SERVER, host_config

pytestmark = pytest.mark.corrosion


@pytest.fixture(scope="module", autouse=True)
def docker_cli() -> None:
    """What this module tests is the real CLI: without one it cannot run, and says so as a
    failure (a skip would leave the run green). The recorded CLI outputs in tests/recorded are
    read by test_registrar_rows.py whatever is installed."""
    if shutil.which("docker") is None:
        pytest.fail(
            "the docker CLI is not on PATH, so the registrar was NOT tested with the real docker CLI:"
            " install it (Debian: docker.io, or docker-ce-cli; no daemon is needed) and run again"
        )

RECORDED = Path(__file__).parent / "recorded" / "registrar"
API = "1.50"


class Daemon:
    """Containers (inspect objects by id) and an event log; each events request streams the
    events appended after it connected, as dockerd does."""

    def __init__(self, socket_path: Path) -> None:
        self.path = socket_path
        self.containers: dict[str, dict[str, Any]] = {}
        self.vanishing: set[str] = set()  # listed, but removed before inspect asks
        self.events: list[bytes] = []
        self.streams = 0
        self.requests: list[str] = []
        self.cond = threading.Condition()
        daemon = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, code: int, body: Any) -> None:
                data = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(code)
                self.send_header("Api-Version", API)
                self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def do_HEAD(self) -> None:
                self.reply(200, "")

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                with daemon.cond:
                    daemon.requests.append(self.path)
                if url.path.endswith("/_ping"):
                    return self.reply(200, "OK")
                if url.path == f"/v{API}/events":
                    return self.stream_events()
                if url.path == f"/v{API}/containers/json":
                    filters = json.loads(query.get("filters", ["{}"])[0])
                    wanted = list(filters.get("label", {}))
                    with daemon.cond:
                        listed = [
                            {"Id": cid, "Names": [c["Name"]], "Labels": c["Config"]["Labels"]}
                            for cid, c in daemon.containers.items()
                            if all(k in c["Config"]["Labels"] for k in wanted)
                        ]
                    return self.reply(200, listed)
                parts = url.path.split("/")
                if len(parts) == 5 and parts[2] == "containers" and parts[4] == "json":
                    with daemon.cond:
                        c = None if parts[3] in daemon.vanishing else daemon.containers.get(parts[3])
                    if c is None:
                        return self.reply(404, {"message": f"No such container: {parts[3]}"})
                    return self.reply(200, c)
                self.reply(404, {"message": "page not found"})

            def stream_events(self) -> None:
                self.send_response(200)
                self.send_header("Api-Version", API)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                with daemon.cond:
                    sent = len(daemon.events)
                    daemon.streams += 1
                    daemon.cond.notify_all()
                try:
                    while True:
                        with daemon.cond:
                            if len(daemon.events) == sent:
                                daemon.cond.wait(timeout=0.5)
                            new, sent = daemon.events[sent:], len(daemon.events)
                        for line in new:
                            if line == b"END":  # the daemon goes away: the stream ends
                                self.wfile.write(b"0\r\n\r\n")
                                self.wfile.flush()
                                return
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                            self.wfile.flush()
                except OSError:
                    pass
                finally:
                    with daemon.cond:
                        daemon.streams -= 1
                    self.close_connection = True

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(str(socket_path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.template = json.loads((RECORDED / "docker-28-inspect-healthy.json").read_text())[0]
        self.event_template = json.loads((RECORDED / "docker-28-events.ndjson").read_text().splitlines()[1])

    def wait_stream(self, count: int = 1) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.streams >= count, timeout=10), "no events stream opened"

    def run(self, cid: str, ip: str, health: str = "starting") -> None:
        c = json.loads(json.dumps(self.template).replace(self.template["Id"], cid))
        c["Name"] = f"/myapp-api-{cid[:4]}"
        c["State"]["Health"] = {"Status": health, "FailingStreak": 0, "Log": []}
        c["NetworkSettings"]["Networks"]["jiji"].update(IPAddress=ip, Gateway="10.210.0.1")
        with self.cond:
            self.containers[cid] = c
        self.event(cid, "start")

    def change(self, cid: str, action: str, **state: Any) -> None:
        with self.cond:
            self.containers[cid]["State"].update(state)
        self.event(cid, action)

    def remove(self, cid: str, event: bool = True) -> None:
        with self.cond:
            self.containers.pop(cid)
        if event:
            self.event(cid, "destroy")

    def event(self, cid: str, action: str) -> None:
        e = copy.deepcopy(self.event_template)
        e.update(status=action, id=cid, Action=action)
        e["Actor"]["ID"] = cid
        self.append(json.dumps(e).encode() + b"\n")

    def append(self, line: bytes) -> None:
        with self.cond:
            self.events.append(line)
            self.cond.notify_all()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def node(workdir: Path) -> Iterator[harness.CorrosionNode]:
    n = harness.CorrosionNode(workdir / "corrosion-registrar-docker")
    yield n
    n.close()


@pytest.fixture
def dockerd() -> Iterator[Daemon]:
    # Unix socket paths are limited to 107 bytes: a short directory, not pytest's tmp_path.
    directory = harness.tempdir("jd-")
    d = Daemon(directory / "docker.sock")
    yield d
    d.close()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def registrar(tool: Path, dockerd: Daemon, node: harness.CorrosionNode, tmp_path: Path) -> Iterator[Any]:
    node.execute("DELETE FROM containers", "DELETE FROM services")
    node.add_container("other-server-row", "myapp", "api", "lab2", "10.210.2.2", 1, "lab2")
    config = host_config(tmp_path, node.api, engine="docker")
    env = dict(os.environ, DOCKER_HOST=f"unix://{dockerd.path}", DOCKER_CONFIG=str(tmp_path / "docker-config"))
    procs: list[subprocess.Popen[bytes]] = []

    def start(*extra: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"registrar-{len(procs)}.log", "ab")
        argv = [sys.executable, str(tool), "--host-config", str(config), "registrar", *extra]
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env))
        log.close()
        return procs[-1]

    yield start
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
    assert node.query("SELECT id FROM containers WHERE server_id = 'lab2'") == [["other-server-row"]]


def rows(node: harness.CorrosionNode) -> dict[str, tuple[str, str]]:
    return {
        r[0]: (r[1], r[2])
        for r in node.query("SELECT id, ip, health_status FROM containers WHERE server_id = ?", [SERVER])
    }


def eventually(node: harness.CorrosionNode, expected: dict[str, tuple[str, str]], timeout: float = 5) -> None:
    harness.wait_until(lambda: rows(node) == expected, timeout, f"rows {expected}", interval=0.02)


A, B = "a1" + "3f1c" * 15 + "d0", "b2" + "3f1c" * 15 + "d0"


def test_real_docker_cli_events_inspect_and_reconcile(
    dockerd: Daemon, node: harness.CorrosionNode, registrar: Any, tmp_path: Path
) -> None:
    dockerd.run(B, "10.210.0.9", health="healthy")
    first = registrar("--reconcile-interval", "300")
    dockerd.wait_stream()
    eventually(node, {B: ("10.210.0.9", "healthy")})
    dockerd.run(A, "10.210.0.5")
    eventually(node, {A: ("10.210.0.5", "unknown"), B: ("10.210.0.9", "healthy")})
    dockerd.change(A, "health_status: healthy", Health={"Status": "healthy", "FailingStreak": 0, "Log": []})
    eventually(node, {A: ("10.210.0.5", "healthy"), B: ("10.210.0.9", "healthy")})
    dockerd.change(A, "exec_die")  # health-check noise: no inspect, no write
    dockerd.change(A, "die", Status="exited", Running=False)
    eventually(node, {B: ("10.210.0.9", "healthy")})
    # The daemon ends the stream: the CLI exits, the registrar restarts it and reconciles.
    dockerd.remove(B, event=False)
    dockerd.append(b"END")
    dockerd.wait_stream()
    eventually(node, {})
    first.send_signal(signal.SIGTERM)
    assert first.wait(10) == 0
    log = (tmp_path / "registrar-0.log").read_text()
    assert "event=events_ended code=0" in log and "event=stopped" in log
    assert any(
        '"label"' in urllib.parse.unquote(p) and "jiji.service" in urllib.parse.unquote(p) for p in dockerd.requests
    )
    assert any('"type"' in urllib.parse.unquote(p) and "container" in urllib.parse.unquote(p) for p in dockerd.requests)


def test_real_docker_cli_reports_a_missing_container_as_gone(
    dockerd: Daemon, node: harness.CorrosionNode, registrar: Any
) -> None:
    dockerd.run(A, "10.210.0.5", health="healthy")
    dockerd.run(B, "10.210.0.6", health="healthy")
    p = registrar("--once")
    assert p.wait(30) == 0
    assert rows(node) == {A: ("10.210.0.5", "healthy"), B: ("10.210.0.6", "healthy")}
    # Gone between `ps` and `inspect`: the CLI prints the other one and "No such container".
    dockerd.vanishing.add(A)
    p = registrar("--once")
    assert p.wait(30) == 0
    assert rows(node) == {B: ("10.210.0.6", "healthy")}


def test_no_daemon_deletes_nothing(
    dockerd: Daemon, node: harness.CorrosionNode, registrar: Any, tmp_path: Path
) -> None:
    dockerd.run(A, "10.210.0.5", health="healthy")
    assert registrar("--once").wait(30) == 0
    dockerd.close()
    began = time.monotonic()
    assert registrar("--once").wait(60) == 1
    assert time.monotonic() - began < 30
    assert rows(node) == {A: ("10.210.0.5", "healthy")}
    assert "Cannot connect to the Docker daemon" in (tmp_path / "registrar-1.log").read_text()
