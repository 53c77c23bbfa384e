"""In-process checks: negative answers follow table changes; a taken port 53 is named clearly."""

from __future__ import annotations

import socket

import dns.message
import dns.rcode
import pytest
from jiji_dns.config import Endpoint
from jiji_dns.responder import Responder
from jiji_dns.server import BindError, bind_udp
from jiji_dns.table import Container, ServiceTable


def ask(r: Responder, name: str, qtype: str = "A") -> dns.message.Message:
    reply = r.answer(dns.message.make_query(name, qtype).to_wire(), True, True)
    assert isinstance(reply, bytes)
    return dns.message.from_wire(reply)


def ready_responder() -> Responder:
    r = Responder("jiji", 60, 5)
    r.ready = True
    return r


def test_a_name_that_appears_is_answered_after_being_nxdomain() -> None:
    r = ready_responder()
    for _ in range(3):  # the second and third miss come from the negative cache
        assert ask(r, "shop-api.jiji").rcode() == dns.rcode.NXDOMAIN
    r.table.upsert(Container("a", "shop", "api", "s1", "10.210.0.2", 1, ""))
    assert ask(r, "shop-api.jiji").answer[0][0].address == "10.210.0.2"


def test_nodata_turns_into_nxdomain_when_the_last_container_goes() -> None:
    r = ready_responder()
    r.table.upsert(Container("a", "shop", "api", "s1", "10.210.0.2", 1, ""))
    for _ in range(2):
        msg = ask(r, "shop-api.jiji", "TXT")
        assert msg.rcode() == dns.rcode.NOERROR and not msg.answer and msg.authority
    r.table.delete("a")
    assert ask(r, "shop-api.jiji", "TXT").rcode() == dns.rcode.NXDOMAIN


def test_a_swapped_in_table_is_not_shadowed_by_the_old_negative_cache() -> None:
    r = ready_responder()
    assert ask(r, "shop-web.jiji").rcode() == dns.rcode.NXDOMAIN
    fresh = ServiceTable("jiji", 60)
    fresh.load([Container("w", "shop", "web", "s1", "10.210.0.7", 1, "")])
    r.table = fresh
    assert ask(r, "shop-web.jiji").answer[0][0].address == "10.210.0.7"


def test_not_ready_is_servfail_and_not_cached() -> None:
    r = Responder("jiji", 60, 5)
    assert ask(r, "shop-api.jiji").rcode() == dns.rcode.SERVFAIL
    r.ready = True
    assert ask(r, "shop-api.jiji").rcode() == dns.rcode.NXDOMAIN


def test_port_53_in_use_names_systemd_resolved() -> None:

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.53", 53))  # where systemd-resolved's stub listener sits
        with pytest.raises(BindError) as err:
            bind_udp(Endpoint("127.0.0.53", 53))
    assert "udp port 53 on 127.0.0.53 is already in use" in str(err.value)
    assert "systemd-resolved" in str(err.value)
