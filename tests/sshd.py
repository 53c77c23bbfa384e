"""A real OpenSSH server on 127.0.0.1 for the provider's tests: its own config, host key, client
key and SFTP, root login by key only. Each server names itself in JIJI_TEST_SERVER (sshd's
SetEnv), so a command can say which server ran it. Stopped by its own pid."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness import free_port, wait_until

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def keypair(path: Path) -> tuple[str, str]:
    """(private key text, public key line 'TYPE BASE64') of a new ed25519 key at `path`."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    public = path.with_suffix(".pub").read_text().split()
    return path.read_text(), f"{public[0]} {public[1]}"


class Sshd:
    def __init__(self, name: str, client_public_key: str, workdir: Path | None = None) -> None:
        self.name = name
        self.dir = workdir or Path(tempfile.mkdtemp(prefix=f"jiji-sshd-{name}-"))
        self.port = free_port()
        _, self.host_key = keypair(self.dir / "host_ed25519")
        (self.dir / "authorized_keys").write_text(client_public_key + "\n")
        (self.dir / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.dir}/host_ed25519\n"
            f"PidFile {self.dir}/sshd.pid\nAuthorizedKeysFile {self.dir}/authorized_keys\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n"
            f"SetEnv JIJI_TEST_SERVER={name}\nMaxStartups 100\nMaxSessions 100\n"
        )
        os.makedirs("/run/sshd", exist_ok=True)  # its privilege separation directory
        self.log = open(self.dir / "sshd.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.dir / "sshd_config")], stdout=self.log, stderr=self.log)
        wait_until(self._listening, 10, f"sshd {name} on 127.0.0.1:{self.port}")

    def _listening(self) -> bool:
        import socket

        if self.proc.poll() is not None:
            raise RuntimeError(f"sshd {self.name} exited: {(self.dir / 'sshd.log').read_text()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        time.sleep(0)
        shutil.rmtree(self.dir, ignore_errors=True)
