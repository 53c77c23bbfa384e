"""Opening a WireGuard handshake initiation as its responder: who is knocking, and when they say
they sent it. The first piece of just-in-time access peers (issue 21): the interface drops an
initiation from a key it does not know, and whoever installs that peer needs its static public key.

Standard library only, since the host tool runs on any python3: X25519 (RFC 7748) and
ChaCha20-Poly1305 (RFC 8439) are written here, BLAKE2s and HMAC come from hashlib and hmac. The
steps and constants are those of the WireGuard paper (section 5.4.2), Noise_IKpsk2. mac1 is
checked before any Diffie-Hellman, so junk costs a BLAKE2s, not two scalar multiplications.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

INITIATION_TYPE = 1
INITIATION_SIZE = 148
CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
# TAI64 labels count from 2^62; WireGuard adds the 10 s TAI-UTC offset of 1970 as well.
_TAI64_EPOCH = 0x400000000000000A


class Refused(ValueError):
    """Not an initiation for this responder: wrong size or type, a bad mac1, or a failed AEAD."""


@dataclass(frozen=True)
class Initiation:
    sender_index: int
    static_public: bytes  # the initiator's static public key: the peer to look up
    timestamp: bytes  # TAI64N as sent: compare as bytes, newer is greater (replay check)

    @property
    def unix_seconds(self) -> float:
        seconds, nanos = struct.unpack(">QI", self.timestamp)
        return seconds - _TAI64_EPOCH + nanos / 1e9


def mac1_problem(packet: bytes, public_key: bytes) -> str | None:
    """Why `packet` is not an initiation with a mac1 for this responder, or None: the cheap check
    (one BLAKE2s) that comes before anything else is spent on a packet."""
    if len(packet) != INITIATION_SIZE or packet[0] != INITIATION_TYPE or packet[1:4] != b"\0\0\0":
        return "not a handshake initiation"
    if not hmac.compare_digest(_mac(_hash(LABEL_MAC1 + public_key), packet[:116]), packet[116:132]):
        return "mac1 does not match this responder's public key"
    return None


def open_initiation(packet: bytes, private_key: bytes, public_key: bytes) -> Initiation:
    """The initiation in `packet`, opened with the responder's key pair; Refused otherwise."""
    problem = mac1_problem(packet, public_key)
    if problem is not None:
        raise Refused(problem)
    ephemeral, sealed_static, sealed_time = packet[8:40], packet[40:88], packet[88:116]
    chain = _hash(CONSTRUCTION)
    h = _hash(_hash(chain + IDENTIFIER) + public_key)
    (chain,) = _kdf(chain, ephemeral, 1)
    h = _hash(h + ephemeral)
    chain, key = _kdf(chain, x25519(private_key, ephemeral), 2)
    static = aead_open(key, 0, sealed_static, h)
    if static is None:
        raise Refused("the static key does not open")
    h = _hash(h + sealed_static)
    chain, key = _kdf(chain, x25519(private_key, static), 2)
    timestamp = aead_open(key, 0, sealed_time, h)
    if timestamp is None:
        raise Refused("the timestamp does not open")
    return Initiation(struct.unpack("<I", packet[4:8])[0], static, timestamp)


def _hash(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def _mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def _kdf(key: bytes, data: bytes, n: int) -> tuple[bytes, ...]:
    t0 = _hmac(key, data)
    out, last = [], b""
    for i in range(1, n + 1):
        last = _hmac(t0, last + bytes([i]))
        out.append(last)
    return tuple(out)


# X25519, RFC 7748 section 5: the Montgomery ladder over p = 2^255 - 19.
_P = 2**255 - 19
_A24 = 121665


def x25519(scalar: bytes, u_bytes: bytes) -> bytes:
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    n = int.from_bytes(k, "little")
    u = int.from_bytes(u_bytes, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3, swap = 1, 0, u, 1, 0
    for t in reversed(range(255)):
        bit = (n >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % _P, (x2 - z2) % _P
        aa, bb = a * a % _P, b * b % _P
        e = (aa - bb) % _P
        c, d = (x3 + z3) % _P, (x3 - z3) % _P
        da, cb = d * a % _P, c * b % _P
        x3, z3 = (da + cb) ** 2 % _P, u * (da - cb) ** 2 % _P
        x2, z2 = aa * bb % _P, e * (aa + _A24 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(32, "little")


def x25519_public(private_key: bytes) -> bytes:
    return x25519(private_key, (9).to_bytes(32, "little"))


# ChaCha20-Poly1305, RFC 8439.
def _rotl(v: int, c: int) -> int:
    return ((v << c) & 0xFFFFFFFF) | (v >> (32 - c))


def _quarter(s: list[int], a: int, b: int, c: int, d: int) -> None:
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF
    s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF
    s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF
    s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF
    s[b] = _rotl(s[b] ^ s[c], 7)


CHACHA_CONSTANTS = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]


def chacha20_rounds(working: list[int]) -> None:
    """ChaCha20's 20 rounds (10 double rounds) on a 16-word state, in place."""
    for _ in range(10):
        _quarter(working, 0, 4, 8, 12)
        _quarter(working, 1, 5, 9, 13)
        _quarter(working, 2, 6, 10, 14)
        _quarter(working, 3, 7, 11, 15)
        _quarter(working, 0, 5, 10, 15)
        _quarter(working, 1, 6, 11, 12)
        _quarter(working, 2, 7, 8, 13)
        _quarter(working, 3, 4, 9, 14)


def chacha20_block(key: bytes, counter: int, nonce: bytes) -> bytes:
    state = [*CHACHA_CONSTANTS, *struct.unpack("<8I", key), counter, *struct.unpack("<3I", nonce)]
    working = list(state)
    chacha20_rounds(working)
    return struct.pack("<16I", *((w + s) & 0xFFFFFFFF for w, s in zip(working, state, strict=True)))


def _chacha20(key: bytes, counter: int, nonce: bytes, data: bytes) -> bytes:
    out = bytearray()
    for i in range(0, len(data), 64):
        block = chacha20_block(key, counter + i // 64, nonce)
        out += bytes(x ^ y for x, y in zip(data[i : i + 64], block, strict=False))
    return bytes(out)


def poly1305(key: bytes, message: bytes) -> bytes:
    r = int.from_bytes(key[:16], "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
    s = int.from_bytes(key[16:], "little")
    p = (1 << 130) - 5
    acc = 0
    for i in range(0, len(message), 16):
        n = int.from_bytes(message[i : i + 16] + b"\x01", "little")
        acc = (acc + n) * r % p
    return ((acc + s) & ((1 << 128) - 1)).to_bytes(16, "little")


def _pad16(data: bytes) -> bytes:
    return b"\0" * (-len(data) % 16)


def _tag(key: bytes, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes:
    otk = chacha20_block(key, 0, nonce)[:32]
    mac_data = aad + _pad16(aad) + ciphertext + _pad16(ciphertext) + struct.pack("<QQ", len(aad), len(ciphertext))
    return poly1305(otk, mac_data)


def _nonce(counter: int) -> bytes:
    return b"\0\0\0\0" + struct.pack("<Q", counter)


def aead_open(key: bytes, counter: int, sealed: bytes, aad: bytes) -> bytes | None:
    """The plaintext of `sealed` (ciphertext and its 16-byte tag), or None when the tag is wrong."""
    if len(sealed) < 16:
        return None
    ciphertext, tag = sealed[:-16], sealed[-16:]
    nonce = _nonce(counter)
    if not hmac.compare_digest(_tag(key, nonce, aad, ciphertext), tag):
        return None
    return _chacha20(key, 1, nonce, ciphertext)


def aead_seal(key: bytes, counter: int, plaintext: bytes, aad: bytes) -> bytes:
    nonce = _nonce(counter)
    ciphertext = _chacha20(key, 1, nonce, plaintext)
    return ciphertext + _tag(key, nonce, aad, ciphertext)
