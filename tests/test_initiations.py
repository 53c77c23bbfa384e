"""Initiations seen beside a listening WireGuard interface (jiji_ops/initiations.py), and what
answering one at once buys: two network namespaces of this test's own, joined by a veth pair,
wireguard-go on each end. The responder does not know the initiator's key, so its interface drops
the initiation; the watcher's kernel filter hands a copy to us and nothing else sent to the port.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from jiji_ops import handshake, initiations

PORT = 51998
# WireGuard's REKEY_TIMEOUT: an initiator with no answer sends its initiation again after 5 s
# (plus up to 333 ms of jitter). Answering at once has to beat it.
REKEY_TIMEOUT = 5.0
REPLAY_PORT = 40000
UNDERLAY = {"a": "198.19.99.1", "b": "198.19.99.2"}
MESH = {"a": "10.99.0.1", "b": "10.99.0.2"}
WATCH = (
    "import json, sys\n"
    "from jiji_ops import initiations\n"
    "w = initiations.Watcher(int(sys.argv[1]))\n"
    "print('watching', flush=True)\n"
    "for k in w:\n"
    "    print(json.dumps(k.__dict__ | {'message': k.message.hex()}), flush=True)\n"
)
# From namespace a to b's WireGuard port: what the filter must keep out. Each a UDP datagram: other
# message types, other sizes, an initiation-sized datagram to another port; then one forged
# initiation (the right shape, random content) that the filter passes and mac1 refuses.
JUNK = (
    "import os, socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "b, port = sys.argv[1], int(sys.argv[2])\n"
    "for i in range(300):\n"
    "    s.sendto(bytes([2 + i % 3]) + os.urandom(147), (b, port))\n"
    "    s.sendto(b'\\x01' + os.urandom(i % 147), (b, port))\n"
    "    s.sendto(b'\\x01' + os.urandom(147 + 1 + i % 40), (b, port))\n"
    "    s.sendto(b'\\x01' + os.urandom(147), (b, port + 1))\n"
    "s.sendto(b'\\x01\\0\\0\\0' + os.urandom(144), (b, port))\n"
)


def wg_keys() -> tuple[str, str]:
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    public = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, check=True).stdout.strip()
    return private, public


@dataclass
class Pair:
    ns: dict[str, str]
    keys: dict[str, tuple[str, str]]

    def run(self, side: str, *command: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns[side], *command], capture_output=True, text=True,
                              check=True, timeout=30, **kwargs)  # type: ignore[call-overload]  # fmt: skip

    def python(self, side: str, program: str, *args: str) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": str(Path(initiations.__file__).parent.parent)}
        return subprocess.Popen(["ip", "netns", "exec", self.ns[side], sys.executable, "-c", program, *args],
                                stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip

    def latest_handshake(self, side: str) -> int:
        out = self.run(side, "wg", "show", f"jw{side}", "latest-handshakes").stdout.split()
        return int(out[1]) if len(out) == 2 else 0


def set_key(pair: Pair, side: str, *rest: str) -> None:
    # The private key goes through a 0600 file, never a command line.
    key_file = Path(f"/run/jin-{os.getpid()}-{side}.key")
    key_file.write_text(pair.keys[side][0] + "\n")
    key_file.chmod(0o600)
    try:
        pair.run(side, "wg", "set", f"jw{side}", "private-key", str(key_file), *rest)
    finally:
        key_file.unlink()


@pytest.fixture
def pair() -> Iterator[Pair]:
    """Namespaces a and b on a veth pair; wireguard-go `jwa` in a, which has b as its peer, and
    `jwb` in b listening on PORT, which has no peers."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, packet sockets): run the tests as root, as CI does")
    ns = {side: f"jin{side}-{os.getpid()}" for side in "ab"}
    p = Pair(ns, {side: wg_keys() for side in "ab"})
    try:
        for side in "ab":
            subprocess.run(["ip", "netns", "add", ns[side]], check=True)
            p.run(side, "ip", "link", "set", "lo", "up")
        p.run("a", "ip", "link", "add", "jinv", "type", "veth", "peer", "name", "jinv", "netns", ns["b"])
        for side in "ab":
            p.run(side, "ip", "addr", "add", f"{UNDERLAY[side]}/30", "dev", "jinv")
            p.run(side, "ip", "link", "set", "jinv", "up")
            p.run(side, "wireguard-go", f"jw{side}")
            p.run(side, "ip", "addr", "add", f"{MESH[side]}/24", "dev", f"jw{side}")
        set_key(p, "b", "listen-port", str(PORT))
        set_key(p, "a", "peer", p.keys["b"][1], "endpoint", f"{UNDERLAY['b']}:{PORT}", "allowed-ips", f"{MESH['b']}/32")
        for side in "ab":
            p.run(side, "ip", "link", "set", f"jw{side}", "up")
        yield p
    finally:
        for side in "ab":
            # Deleting its interface ends wireguard-go; then the namespace goes.
            subprocess.run(["ip", "-n", ns[side], "link", "del", f"jw{side}"], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns[side]], capture_output=True)
            Path(f"/var/run/wireguard/jw{side}.sock").unlink(missing_ok=True)


def knocks(watcher: subprocess.Popen[str], count: int) -> list[initiations.Knock]:
    assert watcher.stdout is not None
    out = []
    for _ in range(count):
        k = json.loads(watcher.stdout.readline())
        out.append(initiations.Knock(**(k | {"message": bytes.fromhex(k["message"])})))
    return out


HAND_BACK = (
    "import json, sys\n"
    "from jiji_ops import initiations\n"
    "k = json.loads(sys.argv[1])\n"
    "initiations.hand_back(initiations.Knock(**(k | {'message': bytes.fromhex(k['message'])})))\n"
)


def endpoint_of_a(pair: Pair) -> str:
    out = pair.run("b", "wg", "show", "jwb", "endpoints").stdout.split()
    return out[1] if len(out) == 2 else ""


@pytest.mark.parametrize("answer", ["hand-back", "initiate-back", "retry"])
def test_an_unknown_initiator_is_seen_opened_and_answered(pair: Pair, answer: str) -> None:
    """hand-back: the captured initiation given to b's interface once a is installed (the design);
    initiate-back: b sends a a packet, so b's interface starts a handshake of its own; retry:
    nothing, a's own retransmit after REKEY_TIMEOUT. The first two answer at once; only hand-back
    leaves WireGuard with a's timestamp, so a replay of that first initiation from another address
    cannot take a's endpoint."""
    watcher = pair.python("b", WATCH, str(PORT))
    try:
        assert watcher.stdout is not None and watcher.stdout.readline().strip() == "watching"
        # 1,200 datagrams of other kinds to the port (and beside it): none reaches the watcher; the
        # one forged initiation does, and mac1 refuses it.
        junk = pair.python("a", JUNK, UNDERLAY["b"], str(PORT))
        assert junk.wait(timeout=30) == 0
        (forged,) = knocks(watcher, 1)
        private_b, public_b = (base64.b64decode(k) for k in pair.keys["b"])
        with pytest.raises(handshake.Refused, match="mac1"):
            handshake.open_initiation(forged.message, private_b, public_b)

        # a sends to b over the mesh: wireguard-go starts a handshake, b's interface drops it.
        pair.run("a", sys.executable, "-c",
                 f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('{MESH['b']}', 9))")  # fmt: skip
        (knock,) = knocks(watcher, 1)
        seen = time.monotonic()
        opened = handshake.open_initiation(knock.message, private_b, public_b)
        assert base64.b64encode(opened.static_public).decode() == pair.keys["a"][1]
        assert (knock.source, knock.destination, knock.port) == (UNDERLAY["a"], UNDERLAY["b"], PORT)
        assert pair.latest_handshake("a") == 0, "b answered an unknown key"

        # Installed as a peer (no endpoint: WireGuard learns it from the initiation); the captured
        # initiation handed back to b's interface at once, or left to a's own retry.
        pair.run("b", "wg", "set", "jwb", "peer", pair.keys["a"][1], "allowed-ips", f"{MESH['a']}/32")
        if answer == "hand-back":
            back = pair.python("b", HAND_BACK, json.dumps(knock.__dict__ | {"message": knock.message.hex()}))
            assert back.wait(timeout=30) == 0
        elif answer == "initiate-back":
            pair.run("b", "wg", "set", "jwb", "peer", pair.keys["a"][1], "endpoint", f"{knock.source}:{knock.source_port}")
            pair.run("b", sys.executable, "-c",
                     f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('{MESH['a']}', 9))")  # fmt: skip
        deadline = seen + 3 * REKEY_TIMEOUT
        while pair.latest_handshake("a") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        took = time.monotonic() - seen
        assert pair.latest_handshake("a") != 0, f"no handshake {took:.1f} s after the initiation was seen"
        print(f"initiation seen -> handshake done, {answer}: {took:.2f} s")
        if answer == "retry":
            # The control: without an answer, the client waits for its own retransmit.
            assert took > REKEY_TIMEOUT - 1, took
        else:
            assert took < REKEY_TIMEOUT, took

        # Someone on the path replays a's first initiation from another port.
        assert endpoint_of_a(pair) == f"{knock.source}:{knock.source_port}"
        replayed = dataclasses.replace(knock, source_port=REPLAY_PORT)
        back = pair.python("b", HAND_BACK, json.dumps(replayed.__dict__ | {"message": replayed.message.hex()}))
        assert back.wait(timeout=30) == 0
        time.sleep(1)  # b's interface has taken it, or not, well within this
        moved = endpoint_of_a(pair) == f"{knock.source}:{REPLAY_PORT}"
        print(f"{answer}: a replayed first initiation {'moved' if moved else 'did not move'} a's endpoint")
        # Only the initiation WireGuard itself consumed set a's timestamp; the others leave the
        # replay window the issue describes.
        assert moved == (answer == "initiate-back"), answer
        # Nothing else passed the filter in the meantime.
        watcher.kill()
        rest, _ = watcher.communicate(timeout=10)
        assert all(json.loads(line)["message"][:2] == "01" for line in rest.splitlines()), rest
    finally:
        watcher.kill()


def test_the_jit_daemon_lets_a_declared_key_in_at_once_and_no_other(pair: Pair, tmp_path: Path) -> None:
    """`jiji-net jit` in b, with a's key declared: 20 rounds, each with a absent from b's kernel
    and a fresh handshake from a, every one done within 1 s (a client left to its own retry
    would take over 5 s); an undeclared key gets nothing, its retry included."""
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps([{"public_key": pair.keys["a"][1], "address": MESH["a"]}]))
    key = Path(f"/run/jin-{os.getpid()}-daemon.key")
    key.write_text(pair.keys["b"][0] + "\n")
    key.chmod(0o600)
    daemon = pair.python("b", "import sys; from jiji_ops.cli import main; sys.exit(main(sys.argv[1:]))", "jit",
                         "--interface", "jwb", "--port", str(PORT), "--key", str(key), "--peers", str(peers),
                         "--state", str(tmp_path / "timestamps.json"))  # fmt: skip
    lines: list[str] = []
    try:
        assert daemon.stdout is not None
        assert daemon.stdout.readline().startswith("event=jit-watching")
        threading.Thread(target=lambda: lines.extend(iter(daemon.stdout.readline, "")), daemon=True).start()  # type: ignore[union-attr]
        poke = f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('{MESH['b']}', 9))"
        took = []
        for _ in range(20):
            # b forgets a; a starts over with b (no session), so its next packet initiates.
            pair.run("b", "wg", "set", "jwb", "peer", pair.keys["a"][1], "remove")
            pair.run("a", "wg", "set", "jwa", "peer", pair.keys["b"][1], "remove")
            pair.run("a", "wg", "set", "jwa", "peer", pair.keys["b"][1], "endpoint", f"{UNDERLAY['b']}:{PORT}",
                     "allowed-ips", f"{MESH['b']}/32")  # fmt: skip
            started = time.monotonic()
            pair.run("a", sys.executable, "-c", poke)
            while pair.latest_handshake("a") == 0 and time.monotonic() - started < 3 * REKEY_TIMEOUT:
                time.sleep(0.01)
            took.append(time.monotonic() - started)
            assert pair.latest_handshake("a") != 0, f"no handshake, daemon said: {lines[-5:]}"
        took.sort()
        print(f"jit daemon: first packet -> handshake, 20 rounds: p50 {took[10]:.3f} s, p99 {took[-1]:.3f} s")
        assert took[-1] < 1.0, (took, [line for line in lines if "jit-refused" in line])
        assert sum("event=jit-installed" in line for line in lines) == 20, lines

        # An undeclared key: refused, and so is its retransmit.
        other_private, _ = wg_keys()
        pair.keys["a"] = (other_private, pair.keys["a"][1])
        set_key(pair, "a")
        pair.run("a", "wg", "set", "jwa", "peer", pair.keys["b"][1], "remove")
        pair.run("a", "wg", "set", "jwa", "peer", pair.keys["b"][1], "endpoint", f"{UNDERLAY['b']}:{PORT}",
                 "allowed-ips", f"{MESH['b']}/32")  # fmt: skip
        pair.run("a", sys.executable, "-c", poke)
        time.sleep(REKEY_TIMEOUT + 1.5)
        assert pair.latest_handshake("a") == 0
        assert sum("reason=unknown" in line for line in lines) >= 2, lines
        assert not any(pair.keys["b"][0] in line for line in lines), "the server's private key was logged"
    finally:
        daemon.kill()
        key.unlink(missing_ok=True)
