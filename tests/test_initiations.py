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


POKE = f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('{MESH['b']}', 9))"


def start_daemon(pair: Pair, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], list[str], Path]:
    """`jiji-net jit` in b with a's key declared; its log lines as they come, and its key file."""
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps([{"public_key": pair.keys["a"][1], "address": MESH["a"]}]))
    key = Path(f"/run/jin-{os.getpid()}-daemon.key")
    key.write_text(pair.keys["b"][0] + "\n")
    key.chmod(0o600)
    daemon = pair.python("b", "import sys; from jiji_ops.cli import main; sys.exit(main(sys.argv[1:]))", "jit",
                         "--interface", "jwb", "--port", str(PORT), "--key", str(key), "--peers", str(peers),
                         "--state", str(tmp_path / "timestamps.json"), *extra)  # fmt: skip
    lines: list[str] = []
    assert daemon.stdout is not None
    assert daemon.stdout.readline().startswith("event=jit-watching")
    threading.Thread(target=lambda: lines.extend(iter(daemon.stdout.readline, "")), daemon=True).start()  # type: ignore[union-attr]
    return daemon, lines, key


def start_over(pair: Pair) -> None:
    """b forgets a; a starts over with b (no session), so its next packet initiates."""
    pair.run("b", "wg", "set", "jwb", "peer", pair.keys["a"][1], "remove")
    pair.run("a", "wg", "set", "jwa", "peer", pair.keys["b"][1], "remove")
    pair.run("a", "wg", "set", "jwa", "peer", pair.keys["b"][1], "endpoint", f"{UNDERLAY['b']}:{PORT}",
             "allowed-ips", f"{MESH['b']}/32")  # fmt: skip


def handshake_seconds(pair: Pair, deadline: float) -> float:
    """From a's first packet to b to a completed handshake (at most `deadline`)."""
    started = time.monotonic()
    pair.run("a", sys.executable, "-c", POKE)
    while pair.latest_handshake("a") == 0 and time.monotonic() - started < deadline:
        time.sleep(0.01)
    return time.monotonic() - started


def test_the_jit_daemon_lets_a_declared_key_in_at_once_and_no_other(pair: Pair, tmp_path: Path) -> None:
    """`jiji-net jit` in b, with a's key declared: 20 rounds, each with a absent from b's kernel
    and a fresh handshake from a, every one done within 1 s (a client left to its own retry
    would take over 5 s); an undeclared key gets nothing, its retry included."""
    daemon, lines, key = start_daemon(pair, tmp_path)
    try:
        took = []
        for _ in range(20):
            start_over(pair)
            took.append(handshake_seconds(pair, 3 * REKEY_TIMEOUT))
            assert pair.latest_handshake("a") != 0, f"no handshake, daemon said: {lines[-5:]}"
        took.sort()
        print(f"jit daemon: first packet -> handshake, 20 rounds: p50 {took[10]:.3f} s, p99 {took[-1]:.3f} s")
        assert took[-1] < 1.0, (took, [line for line in lines if "jit-refused" in line])
        assert sum("event=jit-installed" in line for line in lines) == 20, lines
        # The handed-back initiation is not seen again as a new one (on lo, going out and coming
        # in): it was refused as a replay and took the client's per-source tokens, and in one CI
        # run a round's own initiation was then refused (rate-source) and waited 5.1 s.
        assert not [line for line in lines if "jit-refused" in line], lines

        # An undeclared key: refused, and so is its retransmit.
        other_private, _ = wg_keys()
        pair.keys["a"] = (other_private, pair.keys["a"][1])
        set_key(pair, "a")
        pair.run("a", "wg", "set", "jwa", "peer", pair.keys["b"][1], "remove")
        pair.run("a", "wg", "set", "jwa", "peer", pair.keys["b"][1], "endpoint", f"{UNDERLAY['b']}:{PORT}",
                 "allowed-ips", f"{MESH['b']}/32")  # fmt: skip
        pair.run("a", sys.executable, "-c", POKE)
        time.sleep(REKEY_TIMEOUT + 1.5)
        assert pair.latest_handshake("a") == 0
        assert sum("reason=unknown" in line for line in lines) >= 2, lines
        assert not any(pair.keys["b"][0] in line for line in lines), "the server's private key was logged"
    finally:
        daemon.kill()
        key.unlink(missing_ok=True)


def test_under_load_a_cookie_reply_lets_the_declared_key_in_on_its_retransmit(pair: Pair, tmp_path: Path) -> None:
    """With no opening budget left (--openings 0: always under load), the daemon opens only
    initiations with a valid mac2. a's first initiation gets a cookie reply; wireguard-go takes
    it (so the reply is sealed as WireGuard expects) and its retransmit carries mac2, which the
    daemon accepts: in after one retransmit, never on the first packet."""
    daemon, lines, key = start_daemon(pair, tmp_path, "--openings", "0")
    try:
        start_over(pair)
        seconds = handshake_seconds(pair, 3 * REKEY_TIMEOUT)
        print(f"under load, via a cookie: first packet -> handshake {seconds:.2f} s")
        assert pair.latest_handshake("a") != 0, f"no handshake, daemon said: {lines[-5:]}"
        assert REKEY_TIMEOUT <= seconds < 2 * REKEY_TIMEOUT, seconds
        assert any("reason=cookie" in line for line in lines) and sum("event=jit-installed" in line for line in lines) == 1
    finally:
        daemon.kill()
        key.unlink(missing_ok=True)


# 50,000 forged initiations from namespace a to b's port, from spoofed sources (10.77.0.0/16,
# random ports): 60% with a valid mac1 for b (random content: opening one fails after the first
# X25519), 40% junk (a wrong mac1), and every 1,000th a's own last initiation replayed from a's
# address. Paced at FLOOD_RATE a second, in batches, bounded in count and time.
FLOOD_RATE = 1100
FLOOD = (
    "import hashlib, os, random, socket, struct, sys, time\n"
    "b, port, b_pub, count, rate = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])\n"
    "replay = bytes.fromhex(sys.argv[6])\n"
    "mac1_key = hashlib.blake2s(b'mac1----' + b_pub).digest()\n"
    "raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n"
    "dst = socket.inet_aton(b)\n"
    "started = time.monotonic()\n"
    "for i in range(count):\n"
    "    if i % 1000 == 999:\n"
    "        body, src, sport = replay, socket.inet_aton(sys.argv[7]), int(sys.argv[8])\n"
    "    else:\n"
    "        head = b'\\x01\\0\\0\\0' + os.urandom(112)\n"
    "        mac1 = hashlib.blake2s(head, key=mac1_key, digest_size=16).digest() if i % 5 < 3 else os.urandom(16)\n"
    "        body = head + mac1 + bytes(16)\n"
    "        src, sport = socket.inet_aton(f'10.77.{random.randrange(256)}.{random.randrange(1, 255)}'), random.randrange(1024, 65535)\n"
    "    ip = struct.pack('>BBHHHBBH4s4s', 0x45, 0, 28 + len(body), 0, 0x4000, 64, 17, 0, src, dst)\n"
    "    raw.sendto(ip + struct.pack('>HHHH', sport, port, 8 + len(body), 0) + body, (b, 0))\n"
    "    if i % 100 == 99:\n"
    "        ahead = (i + 1) / rate - (time.monotonic() - started)\n"
    "        if ahead > 0:\n"
    "            time.sleep(ahead)\n"
    "    if time.monotonic() - started > 2 * count / rate + 30:\n"
    "        break\n"
    "print(i + 1, round(time.monotonic() - started, 1), flush=True)\n"
)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_flood_of_forged_initiations_installs_nothing_and_the_declared_key_still_gets_in(
    pair: Pair, tmp_path: Path
) -> None:
    """While 50,000 forged initiations arrive (FLOOD), a starts over with b and gets in by the
    cookie path within two retransmits; nothing else is ever installed. What the daemon spent is
    bounded by its budgets, not by the flood: openings (50 a second), cookie replies (1,000 a
    second); its CPU is printed (the per-operation costs are in docs/performance.md)."""
    daemon, lines, key = start_daemon(pair, tmp_path)
    watcher = pair.python("b", WATCH, str(PORT))
    try:
        # One real initiation of a's, to replay during the flood (its timestamp is then old).
        assert watcher.stdout is not None and watcher.stdout.readline().strip() == "watching"
        start_over(pair)
        assert handshake_seconds(pair, 3 * REKEY_TIMEOUT) < 1.0
        real = knocks(watcher, 1)[0]
        watcher.kill()
        b_public = base64.b64decode(pair.keys["b"][1]).hex()
        cpu_before, started = cpu_seconds(daemon.pid), time.monotonic()
        flood = pair.python("a", FLOOD, UNDERLAY["b"], str(PORT), b_public, "50000", str(FLOOD_RATE),
                            real.message.hex(), real.source, str(real.source_port))  # fmt: skip
        time.sleep(5)  # the daemon is under load by now
        start_over(pair)
        seconds = handshake_seconds(pair, 3 * REKEY_TIMEOUT)
        assert flood.stdout is not None
        sent, flood_seconds = flood.stdout.readline().split()
        flood.wait(30)
        cpu = cpu_seconds(daemon.pid) - cpu_before
        elapsed = time.monotonic() - started
        print(f"flood: {sent} forged initiations in {flood_seconds} s; the declared key in after {seconds:.2f} s;"
              f" the daemon's CPU {cpu:.1f} s over {elapsed:.1f} s ({cpu / elapsed:.0%} of a core)")  # fmt: skip
        assert int(sent) == 50000
        assert pair.latest_handshake("a") != 0 and seconds < 2 * REKEY_TIMEOUT + 1, (seconds, lines[-5:])
        kernel = pair.run("b", "wg", "show", "jwb", "peers").stdout.split()
        assert kernel == [pair.keys["a"][1]], kernel
        assert sum("event=jit-installed" in line for line in lines) == 2, [line for line in lines if "installed" in line]
        # The budgets held: the refusal counts logged every 10 s add up to no more openings than
        # 50 a second (plus the burst) and no more cookie replies than 1,000 a second (plus its).
        totals: dict[str, int] = {}
        for line in lines:
            if line.startswith("event=jit-refusals"):
                for field in line.split()[2:]:
                    name, _, value = field.partition("=")
                    totals[name] = totals.get(name, 0) + int(value)
        print(f"refusals counted: {totals}")
        opened = sum(totals.get(r, 0) for r in ("forged", "unknown", "revoked", "expired", "replay"))
        assert opened <= (50 + 50) * elapsed + 100 + 50, totals  # the openings and verified budgets
        assert totals.get("cookie", 0) <= 1000 * elapsed + 100, totals
        assert totals.get("cookie", 0) > 0, "the flood never put the daemon under load"
    finally:
        daemon.kill()
        key.unlink(missing_ok=True)
        for p in (watcher,):
            p.kill()
