"""In-process checks: negative answers follow table changes; only UDP truncates; a taken port 53
is named clearly."""

from __future__ import annotations

import asyncio
import socket
import struct

import dns.flags
import dns.message
import dns.rcode
import pytest
from jiji_dns import config as config_mod
from jiji_dns.config import Endpoint
from jiji_dns.events import Counters
from jiji_dns.forwarder import Forwarder
from jiji_dns.owner import TableOwner
from jiji_dns.responder import Responder
from jiji_dns.server import BindError, DNSServer, bind_all, bind_udp
from jiji_dns.table import Container

from tests import harness


def ask(r: Responder, name: str, qtype: str = "A") -> dns.message.Message:
    reply = r.answer(dns.message.make_query(name, qtype).to_wire(), True)
    assert isinstance(reply, bytes)
    return dns.message.from_wire(reply)


def ready_responder() -> Responder:
    r = Responder(TableOwner("jiji", 60, Counters()), 5)
    r.tables.replace([])
    return r


def test_a_name_that_appears_is_answered_after_being_nxdomain() -> None:
    r = ready_responder()
    for _ in range(3):  # the second and third miss come from the negative cache
        assert ask(r, "shop-api.jiji").rcode() == dns.rcode.NXDOMAIN
    r.tables.apply([("a", Container("a", "shop", "api", "s1", "10.210.0.2", 1, ""))])
    assert ask(r, "shop-api.jiji").answer[0][0].address == "10.210.0.2"


def test_nodata_turns_into_nxdomain_when_the_last_container_goes() -> None:
    r = ready_responder()
    r.tables.apply([("a", Container("a", "shop", "api", "s1", "10.210.0.2", 1, ""))])
    for _ in range(2):
        msg = ask(r, "shop-api.jiji", "TXT")
        assert msg.rcode() == dns.rcode.NOERROR and not msg.answer and msg.authority
    r.tables.apply([("a", None)])
    assert ask(r, "shop-api.jiji", "TXT").rcode() == dns.rcode.NXDOMAIN


def test_a_swapped_in_table_is_not_shadowed_by_the_old_negative_cache() -> None:
    r = ready_responder()
    assert ask(r, "shop-web.jiji").rcode() == dns.rcode.NXDOMAIN
    r.tables.replace([Container("w", "shop", "web", "s1", "10.210.0.7", 1, "")])
    assert ask(r, "shop-web.jiji").answer[0][0].address == "10.210.0.7"


def test_not_ready_is_servfail_and_not_cached() -> None:
    r = Responder(TableOwner("jiji", 60, Counters()), 5)
    assert ask(r, "shop-api.jiji").rcode() == dns.rcode.SERVFAIL
    r.tables.replace([])
    assert ask(r, "shop-api.jiji").rcode() == dns.rcode.NXDOMAIN


def test_only_the_udp_transport_truncates() -> None:
    """40 A records (682 bytes): over UDP without EDNS the reply is TC with no answers, over TCP
    it is whole, and the responder itself always builds it whole."""
    tables = TableOwner("jiji", 60, Counters())
    tables.replace(Container(f"c{i}", "shop", "many", f"s{i}", f"10.210.{i}.2", i, "") for i in range(40))
    responder = Responder(tables, 5)
    query = dns.message.make_query("shop-many.jiji", "A", use_edns=False).to_wire()
    whole = responder.answer(query, True)
    assert isinstance(whole, bytes) and len(whole) > 512 and not whole[2] & 0x02

    async def main() -> tuple[bytes, bytes]:
        port = harness.free_dns_port()
        cfg = config_mod.load(["--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:9", "--workers", "1"])
        counters = Counters()
        server = DNSServer(cfg, responder, Forwarder(cfg.upstreams, 1, 8, counters), counters, 8)
        server.start(bind_all(cfg.listen))
        loop = asyncio.get_running_loop()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                await loop.sock_sendto(s, query, ("127.0.0.1", port))
                udp = await asyncio.wait_for(loop.sock_recv(s, 65535), 2)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(struct.pack(">H", len(query)) + query)
            size = struct.unpack(">H", await asyncio.wait_for(reader.readexactly(2), 2))[0]
            tcp = await asyncio.wait_for(reader.readexactly(size), 2)
            writer.close()
            return udp, tcp
        finally:
            await server.close()

    udp, tcp = asyncio.run(main())
    assert len(udp) <= 512
    truncated = dns.message.from_wire(udp)
    assert truncated.flags & dns.flags.TC and not truncated.answer
    assert tcp == whole
    full = dns.message.from_wire(tcp)
    assert not full.flags & dns.flags.TC and len(full.answer[0]) == 40


def test_port_53_in_use_names_systemd_resolved() -> None:

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.53", 53))  # where systemd-resolved's stub listener sits
        with pytest.raises(BindError) as err:
            bind_udp(Endpoint("127.0.0.53", 53))
    assert "udp port 53 on 127.0.0.53 is already in use" in str(err.value)
    assert "systemd-resolved" in str(err.value)
