"""The service table: which containers answer which names (pure, no sockets)."""

from __future__ import annotations

import socket

from jiji_dns import wire
from jiji_dns.table import Container, ServiceTable


def c(
    cid: str, server: str, ip: str, started: int = 1, project: str = "shop", service: str = "api", instance: str = ""
) -> Container:
    return Container(cid, project, service, server, ip, started, instance)


def ips(table: ServiceTable, name: str, qtype: int = wire.QTYPE_A) -> list[str]:
    hit = table.answers.get(wire.question_key(wire.encode_name(name), qtype))
    if hit is None:
        return []
    records, out, i = hit[2], [], 0
    while i < len(records):
        rdlen = int.from_bytes(records[i + 10 : i + 12], "big")
        family = socket.AF_INET if rdlen == 4 else socket.AF_INET6
        out.append(socket.inet_ntop(family, records[i + 12 : i + 12 + rdlen]))
        i += 12 + rdlen
    return out


def test_newest_container_per_server_wins() -> None:
    t = ServiceTable("jiji", 60)
    t.load([c("old", "s1", "10.210.0.10", 100), c("new", "s1", "10.210.0.11", 200), c("a", "s2", "10.210.1.5", 150)])
    assert ips(t, "shop-api.jiji") == ["10.210.0.11", "10.210.1.5"]


def test_deleting_the_winner_brings_back_the_next_newest() -> None:
    t = ServiceTable("jiji", 60)
    t.load([c("old", "s1", "10.210.0.10", 100), c("new", "s1", "10.210.0.11", 200)])
    t.delete("new")
    assert ips(t, "shop-api.jiji") == ["10.210.0.10"]
    t.delete("old")
    assert ips(t, "shop-api.jiji") == []
    assert wire.encode_name("shop-api.jiji") not in t.existing


def test_same_service_name_in_two_projects_does_not_collide() -> None:
    t = ServiceTable("jiji", 60)
    t.upsert(c("x", "s1", "10.210.0.2", project="shop"))
    t.upsert(c("y", "s1", "10.210.0.3", project="blog"))
    assert ips(t, "shop-api.jiji") == ["10.210.0.2"]
    assert ips(t, "blog-api.jiji") == ["10.210.0.3"]


def test_instance_names_answer_their_own_newest_container() -> None:
    t = ServiceTable("jiji", 60)
    t.load(
        [
            c("p1", "s1", "10.210.0.2", 1, instance="primary"),
            c("p2", "s1", "10.210.0.3", 5, instance="primary"),
            c("r1", "s2", "10.210.1.2", 3, instance="replica"),
        ]
    )
    assert ips(t, "shop-api-primary.jiji") == ["10.210.0.3"]
    assert ips(t, "shop-api-replica.jiji") == ["10.210.1.2"]


def test_update_moving_a_container_between_services_cleans_the_old_name() -> None:
    t = ServiceTable("jiji", 60)
    t.upsert(c("x", "s1", "10.210.0.2", service="api"))
    t.upsert(c("x", "s1", "10.210.0.2", service="web"))
    assert ips(t, "shop-api.jiji") == []
    assert ips(t, "shop-web.jiji") == ["10.210.0.2"]


def test_iso_timestamps_and_millisecond_timestamps_both_order() -> None:
    t = ServiceTable("jiji", 60)
    t.load([c("a", "s1", "10.210.0.2", "2026-01-01T10:00:00Z"), c("b", "s1", "10.210.0.3", "2026-01-01T10:05:00Z")])
    assert ips(t, "shop-api.jiji") == ["10.210.0.3"]


def test_ipv6_rows_answer_aaaa_and_not_a() -> None:
    t = ServiceTable("jiji", 60)
    t.upsert(c("a", "s1", "fd00::5"))
    assert ips(t, "shop-api.jiji", wire.QTYPE_AAAA) == ["fd00::5"]
    assert ips(t, "shop-api.jiji", wire.QTYPE_A) == []
    assert wire.encode_name("shop-api.jiji") in t.existing


def test_names_that_cannot_be_labels_are_skipped() -> None:
    t = ServiceTable("jiji", 60)
    t.upsert(c("a", "s1", "10.210.0.2", service="x" * 70))
    t.upsert(c("b", "s1", "10.210.0.3", service="dotted.name"))
    assert t.names() == {}


def test_one_walker_splits_and_bounds_every_name() -> None:
    labels: list[int] = []
    assert wire.walk_name(b"\x03api\x04jiji\x00", 0, labels) == 10 and labels == [0, 4]
    longest = b"\x3f" + b"a" * 63  # 64 bytes a label: 3 of them and a 62-byte one make 255 with the root
    assert wire.walk_name(longest * 3 + b"\x3d" + b"b" * 61 + b"\x00", 0) == 255
    assert wire.walk_name(longest * 3 + b"\x3e" + b"b" * 62 + b"\x00", 0) == wire.NAME_TOO_LONG
    assert wire.walk_name(b"\x40" + b"a" * 64 + b"\x00", 0) == wire.NAME_TOO_LONG
    assert wire.walk_name(b"\x03api\xc0\x0c", 0) == wire.NAME_POINTER
    assert wire.walk_name(b"\x03api\x04ji", 0) == wire.NAME_CUT
