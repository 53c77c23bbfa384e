"""Real processes for tests and benchmarks: a Corrosion node, jiji-dns, a dnsmasq upstream.

Everything binds to 127.0.0.1 on free ports and is stopped by its own pid.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from deploy import toolchain

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "hostbin" / "corrosion-schema.sql"


def corrosion_binary() -> Path:
    """The lab's corrosion binary: $JIJI_CORROSION_BIN, else the toolchain cache."""
    explicit = os.environ.get("JIJI_CORROSION_BIN")
    if explicit:
        return Path(explicit)
    return toolchain.cache_dir() / "corrosion" / f"klukai-{toolchain.versions()['KLUKAI_VERSION']}" / "bin" / "corrosion"


# Ports handed out by this process, never handed out twice.
_HANDED_OUT: set[int] = set()


def _below_ephemeral() -> range:
    """Ports the kernel never picks for an implicit bind (a client socket, a forwarder's upstream
    socket): a port from its ephemeral range, free when we looked, could be taken by one of those
    before our server binds it (seen: dnsmasq "Address already in use" in `make bench-dns`)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(10000, max(low, 10001))


def _bindable(port: int, kinds: tuple[int, ...]) -> bool:
    sockets = []
    try:
        for kind in kinds:
            s = socket.socket(socket.AF_INET, kind)
            sockets.append(s)
            s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        for s in sockets:
            s.close()


def _free(kinds: tuple[int, ...]) -> int:
    span = _below_ephemeral()
    for _ in range(1000):
        port = random.choice(span)
        if port not in _HANDED_OUT and _bindable(port, kinds):
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no loopback port free in {span.start}-{span.stop - 1} in 1000 tries")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    return _free((kind,))


def free_dns_port() -> int:
    """A loopback port free for both UDP and TCP at once: jiji-dns binds both."""
    return _free((socket.SOCK_DGRAM, socket.SOCK_STREAM))


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last_error = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f": {last_error}" if last_error else ""))


def _stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class CorrosionNode:
    """One corrosion agent on loopback with the jiji schema; its data survives restart()."""

    def __init__(self, workdir: Path) -> None:
        self.binary = corrosion_binary()
        if not self.binary.exists():
            raise RuntimeError(f"no corrosion binary at {self.binary}: run `lab/toolchain.sh corrosion` first")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "schema").mkdir(exist_ok=True)
        shutil.copy(SCHEMA, self.dir / "schema" / "jiji.sql")
        self.api_port = free_port()
        self.gossip_port = free_port(socket.SOCK_DGRAM)
        self.config = self.dir / "config.toml"
        # Unix socket paths are limited to 107 bytes: keep the admin socket in a short directory.
        self.admin_dir = Path(tempfile.mkdtemp(prefix="jc-"))
        self.config.write_text(
            f'[db]\npath = "{self.dir}/state.db"\nschema_paths = ["{self.dir}/schema"]\n\n'
            f'[gossip]\naddr = "127.0.0.1:{self.gossip_port}"\nplaintext = true\n\n'
            f'[api]\naddr = "127.0.0.1:{self.api_port}"\n\n'
            f'[admin]\npath = "{self.admin_dir}/admin.sock"\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def api(self) -> str:
        return f"127.0.0.1:{self.api_port}"

    def start(self) -> None:
        log = open(self.dir / "agent.log", "ab")
        env = dict(os.environ, TMPDIR=str(self.dir), RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self.proc = subprocess.Popen(
            [str(self.binary), "agent", "-c", str(self.config)], stdout=log, stderr=log, env=env
        )
        log.close()
        wait_until(lambda: self.query("SELECT 1") == [[1]], 30, f"corrosion API on {self.api}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _post(self, path: str, body: Any, timeout: float = 10) -> bytes:
        req = urllib.request.Request(
            f"http://{self.api}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data: bytes = resp.read()
            return data

    def execute(self, *statements: Any) -> Any:
        """Run statements in one transaction: each 'SQL' or ['SQL ?', [params]]."""
        return json.loads(self._post("/v1/transactions", list(statements)))

    def query(self, sql: str, params: list[Any] | None = None) -> list[list[Any]]:
        body: Any = [sql, params] if params else sql
        rows = []
        for line in self._post("/v1/queries", body).splitlines():
            event = json.loads(line)
            if "row" in event:
                rows.append(event["row"][1])
            elif "error" in event:
                raise RuntimeError(event["error"])
        return rows

    def first_resume_event(self, sub_id: str, from_change_id: int) -> dict[str, Any] | None:
        """The first event a resume of `sub_id` from `from_change_id` gets, or None if none in 2 s."""
        try:
            with urllib.request.urlopen(
                f"http://{self.api}/v1/subscriptions/{sub_id}?from={from_change_id}", timeout=2
            ) as resp:
                line = resp.readline()
        except urllib.error.HTTPError as e:
            return {"http_status": e.code}
        except (TimeoutError, OSError):
            return None
        event: dict[str, Any] = json.loads(line)
        return event

    def add_container(
        self,
        cid: str,
        project: str,
        service: str,
        server: str,
        ip: str,
        started_at: int = 1,
        instance: str = "",
        health: str = "healthy",
    ) -> None:
        self.execute(
            ["INSERT INTO services (project, name) VALUES (?, ?) ON CONFLICT DO NOTHING", [project, service]],
            [
                "INSERT INTO containers (id, service, project, server_id, ip, health_status, started_at, instance_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET service = excluded.service,"
                " project = excluded.project, server_id = excluded.server_id, ip = excluded.ip,"
                " health_status = excluded.health_status, started_at = excluded.started_at,"
                " instance_id = excluded.instance_id",
                [cid, service, project, server, ip, health, started_at, instance],
            ],
        )

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.admin_dir, ignore_errors=True)


class DnsDaemon:
    """jiji-dns from the built zipapp (what servers run), on loopback."""

    def __init__(
        self,
        pyz: Path,
        workdir: Path,
        corrosion_api: str,
        upstreams: list[str] | None = None,
        extra: list[str] | None = None,
        python: str = sys.executable,
        workers: int | str = 1,
        nofile: int | None = None,
    ) -> None:
        """`workers`: 1 (one process, what most tests reason about) unless given; `nofile`: an
        open-file limit (soft and hard) for the daemon."""
        self.host = "127.0.0.1"
        self.workdir = workdir
        limit = None if nofile is None else (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
        env = dict(os.environ, JIJI_DNS_WORKERS=str(workers))
        # Another process may take the port between our probe and the daemon's bind; then the
        # daemon exits saying so and we try a fresh port, at most three times.
        for attempt in range(3):
            self.port = free_dns_port()
            self.stats_socket = workdir / f"stats-{self.port}.sock"
            self.log_path = workdir / f"jiji-dns-{self.port}.log"
            args = [
                python,
                str(pyz),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--corrosion-api",
                corrosion_api,
                "--stats-socket",
                str(self.stats_socket),
                "--upstream",
                ",".join(upstreams or ["127.0.0.1:9"]),
                "--upstream-timeout",
                "1",
            ]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(args + (extra or []), stdout=log, stderr=log, preexec_fn=limit, env=env)
            wait_until(lambda: self.stats_socket.exists() or self.proc.poll() is not None, 20, "jiji-dns stats socket")
            if self.proc.poll() is None:
                return
            if "in use" not in self.log() or attempt == 2:
                raise RuntimeError(f"jiji-dns exited {self.proc.returncode} at start:\n{self.log()[-2000:]}")

    def stats(self) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.stats_socket))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        result: dict[str, Any] = json.loads(data)
        return result

    def wait_ready(self, timeout: float = 15) -> None:
        wait_until(lambda: self.stats()["ready"], timeout, "jiji-dns first snapshot")

    def log(self) -> str:
        return self.log_path.read_text()

    def pids(self) -> list[int]:
        """The processes serving: the workers when there are several, else the daemon itself."""
        workers = self.stats().get("workers")
        return [int(w["pid"]) for w in workers] if workers else [self.proc.pid]

    def close(self) -> None:
        _stop(self.proc)


class Dnsmasq:
    """A dnsmasq upstream on loopback serving names from a hosts file, authoritative for them."""

    def __init__(self, workdir: Path, hosts: dict[str, str], domain: str = "upstream.test") -> None:
        self.port = free_port(socket.SOCK_DGRAM)
        hosts_file = workdir / f"hosts-{self.port}"
        hosts_file.write_text("".join(f"{ip} {name}\n" for name, ip in hosts.items()))
        self.proc = subprocess.Popen(
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                f"--addn-hosts={hosts_file}",
                f"--local=/{domain}/",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                f"--port={self.port}",
                "--pid-file=",
                "--user=root",
                "--cache-size=0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: _udp_port_bound(self.port), 10, "dnsmasq to listen")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        _stop(self.proc)


def _udp_port_bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def tempdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


class CuttableProxy:
    """A loopback TCP proxy whose connections can be cut and refused, to disconnect a client."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.refused_at: list[float] = []  # monotonic times of the connections refused while cut
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                self.refused_at.append(time.monotonic())
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)  # a subscription stream may be quiet for a long time
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Refuse new connections and break every open one."""
        self.open = False
        with self._lock:
            for s in self._conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._conns.clear()

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


def dns_query(name: str, qid: int) -> bytes:
    """A plain A query for `name` (no EDNS), as bytes."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + b"\x00\x01\x00\x01"


def sockets_per_worker(d: DnsDaemon, workers: int, attempts: int = 64) -> list[socket.socket]:
    """One UDP client socket per worker of `d`, found by asking from fresh source ports and
    watching which worker's query counter moves (the kernel's SO_REUSEPORT hash is per port)."""

    def counts() -> list[int]:
        return [int(w["queries_udp"]) for w in d.stats()["workers"]]

    found: dict[int, socket.socket] = {}
    for attempt in range(attempts):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        before = counts()
        s.sendto(dns_query("probe.invalid.jiji", attempt), (d.host, d.port))
        s.recv(4096)
        after = counts()
        moved = [i for i in range(workers) if after[i] != before[i]]
        if len(moved) == 1 and moved[0] not in found:
            found[moved[0]] = s
        else:
            s.close()
        if len(found) == workers:
            return [found[i] for i in range(workers)]
    for s in found.values():
        s.close()
    raise RuntimeError(f"{attempts} source ports reached only workers {sorted(found)}")


class LossyProxy:
    """An HTTP proxy on loopback in front of a Corrosion node that can lose what a node may lose:
    with `lose_changes` set, `change` events of subscription streams are dropped on the way
    (as klukai drops a change batched just before a restart); `/v1/updates` always answers 404
    (a node without update notifications), so a change can reach jiji-dns only by a re-read.
    `cut()` breaks every open stream and refuses new ones until `restore()`."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.lose_changes = False
        self.dropped = 0
        self.requests: list[str] = []
        self.open = True
        self._conns: list[Any] = []
        self._lock = threading.Lock()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = http.client.HTTPConnection(*self.target, timeout=None)
        with self._lock:
            self._conns += [client, upstream]
        try:
            stream = client.makefile("rb")
            request_line = stream.readline().decode().strip()
            headers: dict[str, str] = {}
            while (line := stream.readline()) not in (b"\r\n", b""):
                key, _, value = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            body = stream.read(int(headers.get("content-length", "0")))
            method, path = request_line.split()[:2]
            self.requests.append(f"{method} {path}")
            if path.startswith("/v1/updates"):
                client.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                return
            upstream.request(method, path, body=body or None, headers={"Content-Type": "application/json"})
            resp = upstream.getresponse()
            head = f"HTTP/1.1 {resp.status} {resp.reason}\r\n"
            for key in ("corro-query-id", "content-type"):
                if resp.getheader(key):
                    head += f"{key}: {resp.getheader(key)}\r\n"
            client.sendall((head + "transfer-encoding: chunked\r\n\r\n").encode())
            subscription = path.startswith("/v1/subscriptions")
            while line := resp.readline():
                if subscription and self.lose_changes and line.startswith(b'{"change"'):
                    self.dropped += 1
                    continue
                client.sendall(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            client.sendall(b"0\r\n\r\n")
        except (OSError, ValueError, http.client.HTTPException):
            pass
        finally:
            upstream.close()
            client.close()

    def cut(self) -> None:
        """Refuse new connections and break every open one."""
        self.open = False
        with self._lock:
            for c in self._conns:
                try:
                    if isinstance(c, socket.socket):
                        c.shutdown(socket.SHUT_RDWR)
                        c.close()
                    elif c.sock is not None:
                        c.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._conns.clear()

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()
