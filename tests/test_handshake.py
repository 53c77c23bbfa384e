"""Opening handshake initiations (hostbin/jiji_ops/handshake.py): the pure-Python primitives
against the `cryptography` package as an oracle, and a real initiation from wireguard-go, captured
in a network namespace of this test's own, opened with the responder's key."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jiji_ops import handshake

# Captures one datagram on 127.0.0.1:PORT inside the namespace and prints it as hex (10 s at most).
CAPTURE = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind(('127.0.0.1', int(sys.argv[1])))\n"
    "s.settimeout(10)\n"
    "print('listening', flush=True)\n"
    "print(s.recvfrom(2048)[0].hex(), flush=True)\n"
)
PORT = 51999


def raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_x25519_agrees_with_cryptography() -> None:
    for _ in range(20):
        a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        a_raw = a.private_bytes_raw()
        assert handshake.x25519_public(a_raw) == raw(a.public_key())
        assert handshake.x25519(a_raw, raw(b.public_key())) == a.exchange(b.public_key())


def test_chacha20_poly1305_agrees_with_cryptography() -> None:
    for size in (0, 1, 15, 16, 32, 63, 64, 65, 200):
        key, plain, aad = os.urandom(32), os.urandom(size), os.urandom(size % 40)
        nonce = b"\0\0\0\0" + (size * 7).to_bytes(8, "little")
        sealed = ChaCha20Poly1305(key).encrypt(nonce, plain, aad)
        assert handshake.aead_seal(key, size * 7, plain, aad) == sealed
        assert handshake.aead_open(key, size * 7, sealed, aad) == plain
        broken = bytes([sealed[0] ^ 1]) + sealed[1:] if sealed else sealed
        assert handshake.aead_open(key, size * 7, broken, aad) is None


def wg_keys() -> tuple[str, str]:
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    public = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, check=True).stdout.strip()
    return private, public


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace of this test's own, and everything in it gone afterwards."""
    if os.geteuid() != 0:
        pytest.fail("capturing a real initiation needs root (network namespaces): run the tests as root, as CI does")
    name = f"jhs-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        # Deleting its interface ends wireguard-go; then the namespace goes.
        subprocess.run(["ip", "-n", name, "link", "del", "jhs0"], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        Path("/var/run/wireguard/jhs0.sock").unlink(missing_ok=True)


def captured_initiation(namespace: str, initiator_private: str, responder_public: str) -> bytes:
    """wireguard-go as the initiator toward a responder on 127.0.0.1:PORT that never answers: the
    first datagram it sends is its handshake initiation."""
    netns = ["ip", "netns", "exec", namespace]
    listener = subprocess.Popen(
        [*netns, sys.executable, "-c", CAPTURE, str(PORT)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "listening"
        subprocess.run([*netns, "wireguard-go", "jhs0"], check=True, capture_output=True, timeout=30)
        key_file = Path(f"/run/jhs-{os.getpid()}.key")
        key_file.write_text(initiator_private + "\n")
        key_file.chmod(0o600)
        try:
            subprocess.run(
                [*netns, "wg", "set", "jhs0", "private-key", str(key_file), "peer", responder_public,
                 "endpoint", f"127.0.0.1:{PORT}", "allowed-ips", "10.99.0.2/32"],
                check=True, timeout=30,
            )  # fmt: skip
        finally:
            key_file.unlink()
        subprocess.run([*netns, "ip", "addr", "add", "10.99.0.1/24", "dev", "jhs0"], check=True)
        subprocess.run([*netns, "ip", "link", "set", "jhs0", "up"], check=True)
        # A packet for the peer starts the handshake.
        poke = "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('10.99.0.2', 9))"
        subprocess.run([*netns, sys.executable, "-c", poke], check=True, timeout=10)
        out, _ = listener.communicate(timeout=15)
    finally:
        listener.kill()
    return bytes.fromhex(out.strip())


def test_a_real_initiation_opens_with_the_responders_key(namespace: str) -> None:
    initiator_private, initiator_public = wg_keys()
    responder_private, responder_public = wg_keys()
    packet = captured_initiation(namespace, initiator_private, responder_public)
    assert len(packet) == handshake.INITIATION_SIZE and packet[0] == handshake.INITIATION_TYPE

    import base64

    private, public = base64.b64decode(responder_private), base64.b64decode(responder_public)
    opened = handshake.open_initiation(packet, private, public)
    assert base64.b64encode(opened.static_public).decode() == initiator_public
    assert abs(opened.unix_seconds - time.time()) < 60, opened.unix_seconds

    # A responder with another key pair: refused at mac1, before any Diffie-Hellman.
    other_private, other_public = (base64.b64decode(k) for k in wg_keys())
    with pytest.raises(handshake.Refused, match="mac1"):
        handshake.open_initiation(packet, other_private, other_public)
    # One bit changed anywhere before mac1 breaks mac1; with mac1 recomputed, the AEAD refuses it.
    for offset in (4, 8, 40, 88, 115):
        forged = bytearray(packet)
        forged[offset] ^= 1
        with pytest.raises(handshake.Refused):
            handshake.open_initiation(bytes(forged), private, public)
        mac1_key = handshake._hash(handshake.LABEL_MAC1 + public)
        forged[116:132] = handshake._mac(mac1_key, bytes(forged[:116]))
        if offset >= 40:
            with pytest.raises(handshake.Refused, match="does not open"):
                handshake.open_initiation(bytes(forged), private, public)
    # Not an initiation at all.
    for junk in (b"", packet[:147], b"\x02" + packet[1:], packet + b"\0"):
        with pytest.raises(handshake.Refused, match="not a handshake initiation"):
            handshake.open_initiation(junk, private, public)
