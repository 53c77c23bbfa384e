"""Stands in for the Pulumi engine and pulumi-command, running the program's steps on lab hosts.

Used when the real language host or provider is not installed (see tests/engines.py, which picks
the path and says which one ran). The program is evaluated by Pulumi's mock monitor; for each
`command:remote:Command` and `command:remote:CopyToRemote` it registers, this provider does what
pulumi-command 1.2.1 does under the engine's rules, which are the ones our design leans on:
- a resource whose inputs did not change is left alone ("same"); a changed Command runs `update`,
  or `create` again when it has none; a changed CopyToRemote copies again only when the asset's
  hash or the remote path changed (a connection-only change copies nothing);
- `ignore_changes=["*"]` makes an existing resource "same" whatever its inputs;
- a resource the program no longer registers is deleted at the end, newest first, by running its
  stored `delete` with its stored stdin and connection, unless it was `retain_on_delete`, in
  which case it only leaves the state;
- `replace` (an operator's `--replace`) of a `delete_before_replace` resource runs its delete,
  then its create; of any other resource, the create first and the old delete at the end;
- after a failure no new step starts; running steps finish.
It does not diff outputs, refresh, or retry. A pinned `host_key` is checked, as the provider does.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any

from tests import program


class CommandFailed(RuntimeError):
    """A run that failed; `actions` are the steps that finished before it stopped."""

    actions: list[tuple[str, str]] = []


class LabProvider:
    def __init__(self) -> None:
        self.state: dict[str, dict[str, Any]] = {}  # insertion order = creation order
        self.actions: list[tuple[str, str]] = []
        self.seen: set[str] = set()
        self.failed = False
        self.to_replace: set[str] = set()
        self.errors: list[str] = []
        self._late_deletes: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._keydir = Path(tempfile.mkdtemp(prefix="jiji-labprovider-"))

    # The mock monitor calls this for every custom resource it registers.
    def __call__(self, typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        options = program.OPTIONS.get(name, {})
        with self._lock:
            if self.failed:  # like the engine: after an error, no new step starts
                raise CommandFailed(f"{name}: not started, an earlier step failed")
            self.seen.add(name)
            previous = self.state.get(name)
        if previous is not None and name in self.to_replace:
            if options.get("delete_before_replace"):
                self._run_delete(previous)
                with self._lock:
                    self.state[name] = {**previous, "init_failed": True}  # its place, until created again
                    self.actions.append(("delete-replaced", name))
            else:
                self._late_deletes.append(previous)
            previous = None
        unchanged = previous is not None and not previous.get("init_failed") and previous["inputs"] == inputs
        if previous is not None and (unchanged or "*" in options.get("ignore_changes", [])):
            previous["options"] = options
            return dict(previous["outputs"])
        try:
            outputs = self._apply(typ, name, inputs, previous)
        except BaseException as e:
            self.errors.append(f"{name}: {e}")
            self.failed = True
            # pulumi-command returns a failed create with its ID, so the engine keeps the resource
            # (with an init error): the next up runs it again, a destroy runs its delete.
            if typ == "command:remote:Command":
                with self._lock:
                    entry = {"typ": typ, "name": name, "inputs": inputs, "outputs": {}, "options": options}
                    self.state[name] = {**entry, "init_failed": True}
            raise
        with self._lock:
            # A resource keeps its place (the engine deletes in dependency order, which creation
            # order stands for); a new one goes last.
            self.state[name] = {"typ": typ, "name": name, "inputs": inputs, "outputs": outputs, "options": options}
            self.actions.append(("update" if previous is not None else "create", name))
        return dict(outputs)

    def _apply(self, typ: str, name: str, inputs: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
        if typ == "command:remote:Command":
            command = inputs.get("update") or inputs["create"] if previous is not None else inputs["create"]
            stdout = self._ssh(inputs["connection"], command, inputs.get("stdin") or "")
            return {"stdout": stdout.removesuffix("\n"), "stderr": ""}
        if typ == "command:remote:CopyToRemote":
            source, dest = inputs["source"], inputs["remotePath"]
            digest = source["hash"]
            if previous is None or previous["outputs"].get("hash") != digest or previous["inputs"]["remotePath"] != dest:
                if "file_archive" in source:
                    # A directory without a trailing slash lands as dest/<its name>, as sftpCopy does.
                    self._ssh(inputs["connection"], f"mkdir -p '{dest}' && tar -x -C '{dest}'", _tar(Path(source["file_archive"])))
                else:
                    data = Path(source["file_asset"]).read_bytes()
                    self._ssh(inputs["connection"], f"mkdir -p \"$(dirname '{dest}')\" && cat > '{dest}'", data)
            return {"hash": digest}
        raise AssertionError(f"unexpected custom resource {typ} {name}")

    def begin(self, replace: set[str] | None = None) -> None:
        self.failed = False
        self.errors = []
        self.seen.clear()
        self.actions.clear()
        self.to_replace = set(replace or ())
        self._late_deletes.clear()

    def finish(self) -> None:
        """Deletes what the last evaluation no longer has, newest first; then the old halves of
        create-before-delete replacements."""
        for name in reversed([n for n in self.state if n not in self.seen]):
            self.delete(name)
        for entry in self._late_deletes:
            self._run_delete(entry)
            self.actions.append(("delete-replaced", entry["name"]))
        self._late_deletes.clear()

    def destroy(self) -> None:
        for name in reversed(list(self.state)):
            self.delete(name)

    def delete(self, name: str) -> None:
        entry = self.state[name]
        if entry["options"].get("retain_on_delete"):
            self.actions.append(("retain", name))
        else:
            self._run_delete(entry)
            self.actions.append(("delete", name))
        del self.state[name]

    def _run_delete(self, entry: dict[str, Any]) -> None:
        delete = entry["inputs"].get("delete")
        if entry["typ"] == "command:remote:Command" and delete:
            self._ssh(entry["inputs"]["connection"], delete, entry["inputs"].get("stdin") or "")

    def _ssh(self, connection: dict[str, Any], command: str, stdin: str | bytes) -> str:
        conn = connection["secret"] if "secret" in connection else connection
        key = self._keydir / f"key-{hashlib.sha256(conn['privateKey'].encode()).hexdigest()[:16]}"
        if not key.exists():  # written once, atomically, 0600 from the start (steps run in parallel)
            partial = key.with_suffix(f".{threading.get_ident()}")
            partial.touch(mode=0o600)
            partial.write_text(conn["privateKey"])
            partial.replace(key)
        checking = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        if conn.get("hostKey"):
            entry = f"{conn['host']} {conn['hostKey']}\n"
            known = self._keydir / f"known-{hashlib.sha256(entry.encode()).hexdigest()[:16]}"
            if not known.exists():  # steps of one server run in parallel: written once, atomically
                partial = known.with_suffix(f".{threading.get_ident()}")
                partial.write_text(entry)
                partial.replace(known)
            checking = ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}"]
        data = stdin.encode() if isinstance(stdin, str) else stdin
        argv = [
            "ssh", "-i", str(key), "-p", str(int(conn.get("port", 22))),
            "-o", "BatchMode=yes", *checking, "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
            f"{conn.get('user', 'root')}@{conn['host']}", command,
        ]  # fmt: skip
        out = subprocess.run(argv, input=data, capture_output=True, timeout=900)
        if out.returncode != 0:
            raise CommandFailed(
                f"{conn['host']}: exit {out.returncode}: running {command!r}:\n{out.stderr.decode(errors='replace')}"
            )
        return out.stdout.decode(errors="replace")

    def close(self) -> None:
        for f in self._keydir.iterdir():
            f.unlink()
        self._keydir.rmdir()


def _tar(tree: Path) -> bytes:
    """The directory as a tar stream whose top entry is the directory's own name."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(tree, arcname=tree.name)
    return buffer.getvalue()
