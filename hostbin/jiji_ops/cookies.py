"""WireGuard's cookie replies (the WireGuard paper, section 5.4.7), for `jiji-net jit` under load.

Opening an initiation costs two X25519 operations, and anyone who knows a server's public key
can make initiations that pass mac1, from any source address they like. So when the daemon's
budget of openings is spent, it does what WireGuard itself does under load: it opens nothing
that does not carry a valid mac2, and answers the rest with a cookie reply (a small message sent
to the initiation's source address and port). Only a client that really is at that address gets
the cookie; its next initiation (its own retransmit, 5 s later) carries mac2 computed with it, and
is opened ahead of the flood. A forger of source addresses never sees a cookie.

The cookie is a MAC of the source address and port under a secret changed every 2 minutes (the
one before is still accepted, so a cookie handed out just before a change works); the reply
carries it sealed with XChaCha20-Poly1305 under a key only the holder of the server's public key
can derive, with the initiation's mac1 as associated data, which ties the reply to that one
initiation. Standard library only, as handshake.py: HChaCha20 is the ChaCha20 block without its
final addition.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import struct
from collections.abc import Callable

from .handshake import CHACHA_CONSTANTS, INITIATION_SIZE, _hash, _mac, aead_open, aead_seal, chacha20_rounds

LABEL_COOKIE = b"cookie--"
COOKIE_REPLY_TYPE = 3
COOKIE_REPLY_SIZE = 64
SECRET_LIFETIME = 120.0  # seconds: WireGuard's COOKIE_SECRET_MAX_AGE
MAC1, MAC2 = slice(116, 132), slice(132, INITIATION_SIZE)


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """The XChaCha20 subkey (draft-irtf-cfrg-xchacha, section 2.2)."""
    state = [*CHACHA_CONSTANTS, *struct.unpack("<8I", key), *struct.unpack("<4I", nonce16)]
    chacha20_rounds(state)
    return struct.pack("<8I", *state[0:4], *state[12:16])


def xaead_seal(key: bytes, nonce24: bytes, plaintext: bytes, aad: bytes) -> bytes:
    # The ChaCha20-Poly1305 nonce is 4 zero bytes and the last 8 of the 24: aead_seal's counter.
    return aead_seal(hchacha20(key, nonce24[:16]), int.from_bytes(nonce24[16:], "little"), plaintext, aad)


def xaead_open(key: bytes, nonce24: bytes, sealed: bytes, aad: bytes) -> bytes | None:
    return aead_open(hchacha20(key, nonce24[:16]), int.from_bytes(nonce24[16:], "little"), sealed, aad)


def _source_bytes(source: str, port: int) -> bytes:
    return ipaddress.ip_address(source).packed + struct.pack(">H", port)


class CookieJar:
    """The secret, the cookies made with it, the check of mac2 and the reply message."""

    def __init__(self, public_key: bytes, now: float, random: Callable[[int], bytes] = os.urandom) -> None:
        self.random = random
        self.reply_key = _hash(LABEL_COOKIE + public_key)
        self.secrets = [random(32)]  # newest first; at most the one before it as well
        self.changed_at = now

    def _rotate(self, now: float) -> None:
        if now - self.changed_at >= SECRET_LIFETIME:
            # Two lifetimes without a look: the old secret is too old as well.
            keep = self.secrets[:1] if now - self.changed_at < 2 * SECRET_LIFETIME else []
            self.secrets = [self.random(32), *keep]
            self.changed_at = now

    def cookie(self, source: str, port: int, now: float) -> bytes:
        self._rotate(now)
        return _mac(self.secrets[0], _source_bytes(source, port))

    def mac2_ok(self, message: bytes, source: str, port: int, now: float) -> bool:
        """Whether the initiation carries a mac2 made with a cookie this jar gave `source:port`."""
        self._rotate(now)
        mac2 = message[MAC2]
        if len(message) != INITIATION_SIZE or not any(mac2):
            return False
        where = _source_bytes(source, port)
        return any(hmac.compare_digest(_mac(_mac(secret, where), message[: MAC2.start]), mac2) for secret in self.secrets)

    def reply(self, message: bytes, source: str, port: int, now: float) -> bytes:
        """The cookie reply to the initiation `message` from `source:port`: type 3, the
        initiator's sender index as receiver, a random nonce and the sealed cookie."""
        nonce = self.random(24)
        sealed = xaead_seal(self.reply_key, nonce, self.cookie(source, port, now), message[MAC1])
        return struct.pack("<B3x", COOKIE_REPLY_TYPE) + message[4:8] + nonce + sealed
