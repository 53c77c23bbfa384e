"""Where access peers' addresses come from (issue 21): the lower half of access_cidr is the stack's
(the program picks there), the upper half `jiji-net access add`'s (picked on a server at run
time), so the two never pick the same address. Both pick the same way: from SHA-256 of the
peer's name, moved up to the next free address on a clash."""

from __future__ import annotations

import hashlib
import ipaddress


def lower_half(access_cidr: str) -> tuple[int, int]:
    """The first address and the size of the lower half, less its network address."""
    network = ipaddress.IPv4Network(access_cidr)
    return int(network.network_address) + 1, network.num_addresses // 2 - 1


def upper_half(access_cidr: str) -> tuple[int, int]:
    """The first address and the size of the upper half, less its broadcast address."""
    network = ipaddress.IPv4Network(access_cidr)
    half = network.num_addresses // 2
    return int(network.network_address) + half, half - 1


def pick(name: str, half: tuple[int, int], taken: set[int]) -> int:
    """The address for `name` in `half` (first, size) that is not taken; ValueError when all are."""
    first, size = half
    offset = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % size
    for _ in range(size):
        if first + offset not in taken:
            return first + offset
        offset = (offset + 1) % size
    raise ValueError("no free address left")
