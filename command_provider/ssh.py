"""SSH for the provider, with paramiko: dial (with 1.2.1's retries), run a command, copy files.

Why paramiko rather than OpenSSH's client: the private key stays in this process's memory (never
a file, never a command line); a failure to dial is told apart from a command that exits 255;
the host key is compared with the pinned one exactly; and SFTP is what pulumi-command uses for
CopyToRemote, so files land the same way.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import paramiko

# pulumi's retry.Until, which 1.2.1 dials with: 100 ms, times 1.5 after each failure, at most 5 s.
FIRST_DELAY, BACKOFF, MAX_DELAY = 0.1, 1.5, 5.0


class DialError(RuntimeError):
    """The host could not be reached or refused us: nothing ran."""


class HostKeyMismatch(DialError):
    """The server offered another host key than the pinned one."""


class CommandError(RuntimeError):
    """The command ran and failed, or was stopped (timeout, cancel)."""


@dataclass(frozen=True)
class Connection:
    host: str
    port: int
    user: str
    private_key: str
    host_key: str | None
    dial_error_limit: int
    per_dial_timeout: float

    @staticmethod
    def of(values: dict[str, Any]) -> Connection:
        """From a connection input with its secrets revealed and 1.2.1's defaults applied."""
        return Connection(
            host=values["host"],
            port=int(values["port"]),
            user=values["user"],
            private_key=values["privateKey"],
            host_key=values.get("hostKey") or None,
            dial_error_limit=int(values["dialErrorLimit"]),
            per_dial_timeout=float(values["perDialTimeout"]) or 3600.0,
        )

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def _private_key(text: str) -> paramiko.PKey:
    import paramiko  # here, not at the top: a preview never dials, and paramiko is 8 MB of memory

    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text))
        except paramiko.PasswordRequiredException:
            raise DialError("the private key is encrypted; give an unencrypted key (kept as a secret)") from None
        except (paramiko.SSHException, ValueError):
            continue
    raise DialError("the private key is not an ed25519, ECDSA or RSA key in PEM or OpenSSH form")


def _algorithms_for(key_type: str) -> tuple[str, ...]:
    # An RSA key is offered under the rsa-sha2 algorithms; every other type under its own name.
    return ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa") if key_type == "ssh-rsa" else (key_type,)


def _handshake(conn: Connection, pkey: paramiko.PKey) -> paramiko.Transport:
    import paramiko

    sock = socket.create_connection((conn.host, conn.port), timeout=conn.per_dial_timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = conn.per_dial_timeout
        if conn.host_key:
            key_type, key_b64 = conn.host_key.split()[:2]
            transport.get_security_options().key_types = _algorithms_for(key_type)
        transport.start_client(timeout=conn.per_dial_timeout)
        if conn.host_key:
            offered = transport.get_remote_server_key()
            if offered.get_name() != key_type or offered.get_base64() != key_b64:
                raise HostKeyMismatch(
                    f"{conn.host}:{conn.port}: host key mismatch: the server offered {offered.get_name()} "
                    f"{offered.fingerprint}, the stack pins {key_type} {_fingerprint(key_b64)}; if the server was "
                    "reinstalled, pin its new key (ssh-keyscan over a path you trust), else someone else answers for it"
                )
        transport.auth_publickey(conn.user, pkey)
        sock.settimeout(None)
        return transport
    except BaseException:
        transport.close()
        raise


def _fingerprint(key_b64: str) -> str:
    digest = hashlib.sha256(base64.b64decode(key_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def dial(conn: Connection, cancelled: threading.Event, on_retry: Callable[[str], None] = lambda _: None) -> paramiko.Transport:
    """An authenticated transport, or DialError after `dial_error_limit` + 1 failed dials (1.2.1
    counts that way; -1 is no limit). A host-key mismatch or a refused key is not retried: the
    next try would meet the same key."""
    import paramiko

    pkey = _private_key(conn.private_key)
    delay, failures = FIRST_DELAY, 0
    while True:
        try:
            return _handshake(conn, pkey)
        except HostKeyMismatch:
            raise
        except paramiko.AuthenticationException as e:
            raise DialError(f"{conn.where}: the server refused the key: {e}") from None
        except (OSError, EOFError, paramiko.SSHException) as e:
            failures += 1
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            if 0 <= conn.dial_error_limit < failures:
                raise DialError(f"dialing {conn.where}: after {failures - 1} failed attempts: {reason}") from None
            limit = "inf" if conn.dial_error_limit < 0 else str(conn.dial_error_limit)
            on_retry(f"Dial {failures}/{limit} failed: retrying ({reason})")
        if cancelled.wait(delay):
            raise DialError(f"dialing {conn.where}: cancelled")
        delay = min(delay * BACKOFF, MAX_DELAY)


@dataclass
class Result:
    stdout: str
    stderr: str


def run(
    transport: paramiko.Transport,
    command: str,
    stdin: str,
    environment: dict[str, str],
    on_output: Callable[[str], None],
    deadline: float | None,
    cancelled: threading.Event,
) -> Result:
    """Runs `command` with `stdin`; CommandError with its combined output when it fails.
    `on_output` gets each line as it comes (the engine shows it)."""
    channel = transport.open_session(timeout=30)
    for key, value in environment.items():
        channel.set_environment_variable(key, value)
    channel.exec_command(command)
    stdout, stderr, both = bytearray(), bytearray(), bytearray()
    lock = threading.Lock()

    def feed() -> None:
        try:
            if stdin:
                channel.sendall(stdin.encode())
            channel.shutdown_write()
        except OSError:
            pass  # the command exited without reading all of it: its status tells

    def drain(receive: Callable[[int], bytes], into: bytearray) -> None:
        pending = b""
        while True:
            try:
                data = receive(32768)
            except OSError:
                data = b""
            if not data:
                break
            with lock:
                into += data
                both.extend(data)
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                on_output(line.decode(errors="replace"))
        if pending:
            on_output(pending.decode(errors="replace"))

    threads = [
        threading.Thread(target=feed, daemon=True),
        threading.Thread(target=drain, args=(channel.recv, stdout), daemon=True),
        threading.Thread(target=drain, args=(channel.recv_stderr, stderr), daemon=True),
    ]
    for t in threads:
        t.start()
    stopped = ""
    while not channel.status_event.wait(0.2):
        if cancelled.is_set():
            stopped = "cancelled"
        elif deadline is not None and time.monotonic() > deadline:
            stopped = "timed out"
        if stopped:
            channel.close()
            break
    for t in threads[1:]:
        t.join(None if not stopped else 5)
    status = channel.recv_exit_status() if not stopped else -1
    channel.close()
    text = both.decode(errors="replace")
    if stopped:
        raise CommandError(f"{stopped}: running {json.dumps(command)}:\n{text}")
    if status != 0:
        what = f"Process exited with status {status}" if status > 0 else "Process exited without an exit status"
        raise CommandError(f"{what}: running {json.dumps(command)}:\n{text}")
    return Result(stdout.decode(errors="replace"), stderr.decode(errors="replace"))


def copy(transport: paramiko.Transport, source: str, dest: str, text: str | None = None) -> None:
    """What 1.2.1's CopyToRemote does with SFTP: a file onto `dest` (or into it when `dest` is a
    directory); a directory into `dest/<its name>`, or onto `dest` itself when `source` ends
    with a slash; parent directories made as needed."""
    import paramiko

    sftp = paramiko.SFTPClient.from_transport(transport)
    assert sftp is not None
    try:
        if text is not None:
            if _is_dir(sftp, dest):
                raise CommandError(f"remote path {dest} is a directory; when using a text asset, remotePath must be a file path")
            _makedirs(sftp, os.path.dirname(dest))
            with sftp.open(dest, "w") as f:
                f.write(text.encode())
            return
        if os.path.isdir(source):
            if not _exists(sftp, dest):
                _makedirs(sftp, dest)
            target = dest
            if not source.endswith("/"):
                target = os.path.join(dest, os.path.basename(source))
                if _exists(sftp, target) and not _is_dir(sftp, target):
                    raise CommandError(f"remote path {target} exists but is not a directory")
                if not _exists(sftp, target):
                    _mkdir(sftp, target)
            _copy_tree(sftp, source, target)
        else:
            target = dest
            if _is_dir(sftp, dest):
                target = os.path.join(dest, os.path.basename(source))
            elif not _exists(sftp, dest):
                _makedirs(sftp, os.path.dirname(dest))
            sftp.put(source, target)
    except OSError as e:
        raise CommandError(f"copying {source} to {dest}: {e}") from None
    finally:
        sftp.close()


def _copy_tree(sftp: paramiko.SFTPClient, source: str, target: str) -> None:
    for root, dirs, files in os.walk(source):
        rel = os.path.relpath(root, source)
        remote_root = target if rel == "." else os.path.join(target, rel)
        for d in sorted(dirs):
            path = os.path.join(remote_root, d)
            if not _exists(sftp, path):
                _mkdir(sftp, path)
        for f in sorted(files):
            sftp.put(os.path.join(root, f), os.path.join(remote_root, f))


def _exists(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        sftp.stat(path)
        return True
    except FileNotFoundError:
        return False


def _is_dir(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        return stat.S_ISDIR(sftp.stat(path).st_mode or 0)
    except FileNotFoundError:
        return False


def _makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    if not path or path == "/" or _exists(sftp, path):
        return
    _makedirs(sftp, os.path.dirname(path))
    _mkdir(sftp, path)


def _mkdir(sftp: paramiko.SFTPClient, path: str) -> None:
    """mkdir that accepts a directory made meanwhile: the engine runs copies to one server in
    parallel, and two may make the same parent at once (SFTP answers a bare "Failure")."""
    try:
        sftp.mkdir(path)
    except OSError:
        if not _is_dir(sftp, path):
            raise
