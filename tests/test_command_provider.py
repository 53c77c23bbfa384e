"""Conformance of the `command` provider: the same table of cases against our implementation
(command_provider/) always, and against the official pulumi-resource-command 1.2.1 where it is
installed in the user's PULUMI_HOME, with the same expected results. Each case is a real
deployment through the real engine (the Automation API, tests/provider_case.py) against real
OpenSSH servers on loopback (tests/sshd.py); commands write what ran, on which server, to a log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy import toolchain
from tests.harness import REPO, free_port
from tests.sshd import Sshd, keypair

PROVIDERS = ["jiji"]
if toolchain.plugin_file(toolchain.user_home()).exists():
    PROVIDERS.append("official")


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return keypair(tmp_path_factory.mktemp("client") / "id_ed25519")


@pytest.fixture(scope="module")
def servers(key: tuple[str, str]) -> Iterator[dict[str, Sshd]]:
    started = {name: Sshd(name, key[1]) for name in ("a", "b")}
    yield started
    for s in started.values():
        s.close()


@pytest.fixture(params=PROVIDERS)
def home(request: pytest.FixtureRequest) -> Path:
    if request.param == "official":
        print(f"\nprovider: official pulumi-resource-command 1.2.1 in {toolchain.user_home()}")
        return toolchain.user_home()
    toolchain.install_ours(toolchain.PROJECT_HOME)
    print(f"\nprovider: jiji-net's command_provider in {toolchain.PROJECT_HOME}")
    return toolchain.PROJECT_HOME


class Stack:
    """A throwaway stack of a small program; `log` is what the commands wrote."""

    def __init__(self, workdir: Path, home: Path, key: tuple[str, str], servers: dict[str, Sshd]) -> None:
        self.dir, self.home, self.key, self.servers = workdir, home, key, servers
        self.log = workdir / "ops.log"

    def server(self, name: str, **changes: Any) -> dict[str, Any]:
        s = self.servers[name]
        return {"host": "127.0.0.1", "port": s.port, "host_key": s.host_key, **changes}

    def command(self, name: str, server: str = "a", **fields: Any) -> dict[str, Any]:
        """A Command whose create/update/delete log '<server> <name> <verb> <stdin>'."""
        def logs(verb: str) -> str:
            return f'echo "$JIJI_TEST_SERVER {name} {verb} $(cat)" >> {self.log}; echo {verb}-done'

        return {
            "name": name, "type": "command", "server": self.server(server), "private_key": self.key[0],
            "create": logs("create"), "delete": logs("delete"), "stdin": "v1", **fields,
        }  # fmt: skip

    def run(self, action: str, resources: list[dict[str, Any]], verbose_log: bool = False) -> dict[str, Any]:
        spec = {"dir": str(self.dir), "stack": "t", "action": action, "pulumi_home": str(self.home),
                "resources": resources, "verbose_log": verbose_log}  # fmt: skip
        path = self.dir / "spec.json"
        path.write_text(json.dumps(spec))
        out = subprocess.run(
            [sys.executable, "-m", "tests.provider_case", str(path)], cwd=REPO, capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0, out.stderr[-3000:]
        result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
        return result

    def ran(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def export(self, show_secrets: bool = False) -> str:
        argv = [str(toolchain.pulumi_root() / "bin" / "pulumi"), "stack", "export", "--stack", "t"]
        env = {**toolchain.cli_env(self.home, f"file://{self.dir}/state"), "PULUMI_CONFIG_PASSPHRASE": "conformance"}
        out = subprocess.run(argv + (["--show-secrets"] if show_secrets else []), cwd=self.dir, env=env,
                             capture_output=True, text=True, check=True)  # fmt: skip
        return out.stdout


@pytest.fixture
def stack(tmp_path: Path, home: Path, key: tuple[str, str], servers: dict[str, Sshd]) -> Stack:
    return Stack(tmp_path, home, key, servers)


def changed(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(op, name) for op, name, _ in result["events"] if op not in ("same", "read", "refresh")]


def test_create_runs_create_once_and_preview_runs_nothing(stack: Stack) -> None:
    resources = [stack.command("c")]
    preview = stack.run("preview", resources)
    assert preview["ok"], preview
    assert stack.ran() == []
    up = stack.run("up", resources)
    assert up["ok"], up
    assert stack.ran() == ["a c create v1"]
    assert up["outputs"]["c"] == "create-done"  # stdout, its last newline off
    again = stack.run("up", resources)
    assert changed(again) == [] and stack.ran() == ["a c create v1"]


def test_a_change_runs_update_or_else_create(stack: Stack) -> None:
    with_update = stack.command("u", update=f'echo "$JIJI_TEST_SERVER u update $(cat)" >> {stack.log}')
    without = stack.command("n")
    stack.run("up", [with_update, without])
    result = stack.run("up", [{**with_update, "stdin": "v2"}, {**without, "stdin": "v2"}])
    assert result["ok"], result
    assert sorted(changed(result)) == [("update", "n"), ("update", "u")]
    assert sorted(stack.ran()[2:]) == ["a n create v2", "a u update v2"]


def test_a_triggers_change_replaces_in_the_engines_order(stack: Stack) -> None:
    later = stack.command("later", triggers=[1])
    first = stack.command("first", triggers=[1], delete_before_replace=True)
    stack.run("up", [later, first])
    result = stack.run("up", [{**later, "triggers": [2], "stdin": "v2"}, {**first, "triggers": [2], "stdin": "v2"}])
    assert result["ok"], result
    ran = stack.ran()[2:]
    # Create before delete by default; delete first with delete_before_replace. A delete runs its
    # stored stdin (v1), a create the new one.
    assert [line for line in ran if " later " in line] == ["a later create v2", "a later delete v1"]
    assert [line for line in ran if " first " in line] == ["a first delete v1", "a first create v2"]


def test_delete_runs_with_the_stored_inputs_after_the_connection_changed(stack: Stack) -> None:
    moving = stack.command("m", triggers=[1])
    stack.run("up", [moving])
    moved = {**moving, "server": stack.server("b"), "triggers": [2], "stdin": "v2"}
    result = stack.run("up", [moved])
    assert result["ok"], result
    assert stack.ran() == ["a m create v1", "b m create v2", "a m delete v1"]
    gone = stack.run("up", [])
    assert gone["ok"], gone
    assert stack.ran()[-1] == "b m delete v2"


def test_a_failed_create_leaves_no_resource_and_runs_again(stack: Stack) -> None:
    """1.2.1 returns no partial state for a failed create: the engine keeps nothing, the next up
    creates it again, and a destroy has nothing to delete (a step's script must cope)."""
    failing = stack.command("f", create=f'echo "f create $(cat)" >> {stack.log}; echo half-done; exit 3')
    first = stack.run("up", [failing])
    assert not first["ok"] and "half-done" in first["error"] and "exit" in first["error"], first
    assert "::f" not in stack.export()
    second = stack.run("up", [failing])
    assert not second["ok"]
    assert stack.ran() == ["f create v1", "f create v1"]
    destroyed = stack.run("destroy", [])
    assert destroyed["ok"], destroyed
    assert stack.ran() == ["f create v1", "f create v1"]


def test_a_create_past_its_custom_timeout(stack: Stack) -> None:
    """The one deliberate difference: the engine passes `custom_timeouts` to the provider; 1.2.1
    ignores it and runs the command to its end, ours stops it and fails."""
    slow = stack.command("s", create="sleep 20", timeout_create="3s")
    started = time.monotonic()
    result = stack.run("up", [slow])
    seconds = time.monotonic() - started
    if stack.home != toolchain.PROJECT_HOME:
        assert result["ok"] and seconds >= 20, (seconds, result)
        return
    assert not result["ok"] and "timed out" in result["error"], result
    # The 3 s timeout and the run's own start-up (a few seconds), well short of the command's 20 s.
    assert seconds < 20, seconds
    print(f"create with a 3 s timeout failed after {seconds:.1f} s of `up`")


def test_a_blackholed_host_fails_after_its_per_dial_timeout(stack: Stack) -> None:
    port = free_port()
    rule = ["OUTPUT", "-o", "lo", "-p", "tcp", "--dport", str(port), "--syn", "-j", "DROP"]
    subprocess.run(["iptables", "-w", "-I", *rule], check=True)
    try:
        silent = {**stack.command("b", dial_error_limit=1, per_dial_timeout=2), "server": stack.server("a", port=port)}
        started = time.monotonic()
        result = stack.run("up", [silent])
        seconds = time.monotonic() - started
    finally:
        subprocess.run(["iptables", "-w", "-D", *rule], check=True)
    assert not result["ok"], result
    assert "after 1 failed attempts" in result["error"] and "timeout" in result["error"].lower(), result["error"]
    assert seconds >= 2 * 2, seconds  # two dials of 2 s each, neither answered
    assert stack.ran() == []


def test_a_host_key_mismatch_fails_and_runs_nothing(stack: Stack) -> None:
    wrong = {**stack.command("k"), "server": stack.server("a", host_key=stack.servers["b"].host_key)}
    result = stack.run("up", [wrong])
    assert not result["ok"], result
    assert "mismatch" in result["error"].lower(), result["error"]
    assert stack.ran() == []


def test_an_unreachable_host_fails_after_its_dial_error_limit(stack: Stack) -> None:
    nowhere = {**stack.command("x", dial_error_limit=2), "server": stack.server("a", port=free_port())}
    result = stack.run("up", [nowhere])
    assert not result["ok"], result
    assert "after 2 failed attempts" in result["error"], result["error"]
    assert stack.ran() == []


def test_secrets_stay_out_of_state_logs_and_command_lines(stack: Stack) -> None:
    secret_stdin = "stdin-secret-7f3a91"
    watched = stack.command("w", create=f"sleep 3; cat >> {stack.log}", stdin=secret_stdin, stdin_secret=True)
    key_body = stack.key[0].splitlines()[1]
    seen: list[str] = []
    stop = threading.Event()

    def watch_command_lines() -> None:
        while not stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        seen.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
                    except OSError:
                        continue
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_command_lines)
    watcher.start()
    try:
        result = stack.run("up", [watched], verbose_log=True)
    finally:
        stop.set()
        watcher.join()
    assert result["ok"], result
    assert stack.ran() == [secret_stdin]  # it did reach the command, on stdin
    assert any("sleep 3" in line for line in seen), "the watcher never saw the command run"
    for where, text in [("state", stack.export()), ("engine log", result["engine_log"]), ("engine output", result["output"]),
                        ("command lines", "\n".join(seen))]:  # fmt: skip
        assert key_body not in text, f"the private key is in the {where}"
        assert secret_stdin not in text, f"the secret stdin is in the {where}"
    assert len(result["engine_log"]) > 10_000, "the engine's verbose log was not captured"
    assert key_body in stack.export(show_secrets=True)  # it is in state, encrypted


def test_copy_to_remote_copies_a_file_and_a_directory_again_only_when_they_change(stack: Stack, tmp_path: Path) -> None:
    local = tmp_path / "src"
    (local / "tree").mkdir(parents=True)
    (local / "tree" / "a.txt").write_text("A1\n")
    (local / "file.txt").write_text("F1\n")
    dest = tmp_path / "remote"
    copies = [
        {"name": "file", "type": "copy", "server": stack.server("a"), "private_key": stack.key[0],
         "source": str(local / "file.txt"), "remote_path": str(dest / "deep" / "file.txt")},
        {"name": "tree", "type": "copy", "server": stack.server("a"), "private_key": stack.key[0],
         "source": str(local / "tree"), "remote_path": str(dest / "staging")},
    ]  # fmt: skip
    first = stack.run("up", copies)
    assert first["ok"], first
    assert (dest / "deep" / "file.txt").read_text() == "F1\n"
    assert (dest / "staging" / "tree" / "a.txt").read_text() == "A1\n"  # into dest/<its name>
    (dest / "deep" / "file.txt").write_text("edited on the server\n")
    same = stack.run("up", copies)
    assert changed(same) == [] and (dest / "deep" / "file.txt").read_text() == "edited on the server\n"
    (local / "file.txt").write_text("F2\n")
    again = stack.run("up", copies)
    assert changed(again) == [("update", "file")], again["events"]
    assert (dest / "deep" / "file.txt").read_text() == "F2\n"
    assert stack.run("destroy", [])["ok"]
    assert (dest / "deep" / "file.txt").exists()  # CopyToRemote has no delete
