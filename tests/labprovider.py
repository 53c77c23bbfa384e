"""Runs the program's remote commands on the lab hosts over real SSH.

This stands in for the pulumi-command provider, which cannot be built here (see README): the
program is evaluated by Pulumi's mock monitor, and for each `command:remote:Command` and
`command:remote:CopyToRemote` it registers, this provider does what pulumi-command does with
the same inputs. It keeps the inputs of the last run, so a resource whose inputs did not change
is left alone (a no-op `up` runs nothing), a changed one runs `create` again (our commands have no
`update`), and one that is gone runs its stored `delete`, in reverse order of creation.
It is not the Pulumi engine: it does not diff outputs, refresh, or retry.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any


class CommandFailed(RuntimeError):
    pass


class LabProvider:
    def __init__(self) -> None:
        self.state: dict[str, dict[str, Any]] = {}  # insertion order = creation order
        self.actions: list[tuple[str, str]] = []
        self.seen: set[str] = set()
        self.failed = False
        self._lock = threading.Lock()
        self._keydir = Path(tempfile.mkdtemp(prefix="jiji-labprovider-"))

    # The mock monitor calls this for every custom resource it registers.
    def __call__(self, typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self.failed:  # like the engine: after an error, no new step starts
                raise CommandFailed(f"{name}: not started, an earlier step failed")
            self.seen.add(name)
            previous = self.state.get(name)
        if previous is not None and previous["inputs"] == inputs:
            return dict(previous["outputs"])
        try:
            if typ == "command:remote:Command":
                stdout = self._ssh(inputs["connection"], inputs["create"], inputs.get("stdin") or "")
                outputs = {"stdout": stdout, "stderr": ""}
            elif typ == "command:remote:CopyToRemote":
                data = Path(inputs["source"]["file_asset"]).read_bytes()
                self._ssh(inputs["connection"], f"cat > {inputs['remotePath']}", data)
                outputs = {}
            else:
                raise AssertionError(f"unexpected custom resource {typ} {name}")
        except BaseException:
            self.failed = True
            raise
        with self._lock:
            self.state.pop(name, None)
            self.state[name] = {"typ": typ, "inputs": inputs, "outputs": outputs}
            self.actions.append(("update" if previous is not None else "create", name))
        return dict(outputs)

    def begin(self) -> None:
        self.failed = False
        self.seen.clear()
        self.actions.clear()

    def finish(self) -> None:
        """Deletes what the last evaluation no longer has, newest first."""
        for name in reversed([n for n in self.state if n not in self.seen]):
            self.delete(name)

    def destroy(self) -> None:
        for name in reversed(list(self.state)):
            self.delete(name)

    def delete(self, name: str) -> None:
        entry = self.state[name]
        delete = entry["inputs"].get("delete")
        if entry["typ"] == "command:remote:Command" and delete:
            self._ssh(entry["inputs"]["connection"], delete, "")
        del self.state[name]
        self.actions.append(("delete", name))

    def _ssh(self, connection: dict[str, Any], command: str, stdin: str | bytes) -> str:
        conn = connection["secret"] if "secret" in connection else connection
        key = self._keydir / f"key-{abs(hash(conn['privateKey']))}"
        if not key.exists():
            key.write_text(conn["privateKey"])
            key.chmod(0o600)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        argv = [
            "ssh", "-i", str(key), "-p", str(int(conn.get("port", 22))),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
            f"{conn.get('user', 'root')}@{conn['host']}", command,
        ]  # fmt: skip
        out = subprocess.run(argv, input=data, capture_output=True, timeout=300)
        if out.returncode != 0:
            raise CommandFailed(
                f"{conn['host']}: exit {out.returncode}: {out.stderr.decode(errors='replace')}\ncommand:\n{command}"
            )
        return out.stdout.decode(errors="replace")

    def close(self) -> None:
        for f in self._keydir.iterdir():
            f.unlink()
        self._keydir.rmdir()
