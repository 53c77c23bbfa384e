"""The registrar's pure core on engine output in the formats of podman 4.3 (Debian bookworm) and
docker 28: events, inspect, the row each container should have and the statements written.

The files under tests/recorded/registrar/ were written by hand in those formats (no engine runs
here). The docker event lines were checked by passing them through the real docker 28.2.2 CLI
(`docker events --format '{{json .}}'` against a stand-in daemon socket), which re-encodes every
field; the inspect error texts below are what that CLI printed.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from jiji_ops import engine, registrations
from jiji_ops.corrosion import Statement
from jiji_ops.engine import Malformed
from jiji_ops.registrations import Host, Row

RECORDED = Path(__file__).parent / "recorded" / "registrar"
SCHEMA = Path(__file__).parent.parent / "hostbin" / "corrosion-schema.sql"
PODMAN_API = "9b1e6c0d4a7f42e3b8c5d1f0a6e9b2c7d4f1a8e5b2c9d6f3a0e7b4c1d8f5a2e9"
PODMAN_WEB = "c2d4e6f8a0b1c3d5e7f9a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0"
DOCKER_API = "3f1c9a7e5b2d4c6a8e0f1b3d5c7a9e1f2b4d6c8a0e2f4b6d8c0a2e4f6b8d0c2a"
LAB0 = Host(server="lab0", subnet="10.210.0.0/24", network="jiji")
LAB1 = Host(server="lab1", subnet="10.210.1.0/24", network="jiji")


def inspected(name: str) -> Any:
    return json.loads((RECORDED / name).read_text())[0]


def container(name: str, **state: Any) -> engine.Container:
    raw = inspected(name)
    raw["State"].update(state)
    return engine.parse_container(raw)


def events(name: str) -> list[engine.Event | None]:
    return [engine.parse_event(line) for line in (RECORDED / name).read_text().splitlines()]


def test_podman_events_give_id_verb_and_labels() -> None:
    parsed = events("podman-4.3-events.ndjson")
    assert [(e.container_id[:12], e.action) for e in parsed if e] == [
        ("9b1e6c0d4a7f", "create"),
        ("9b1e6c0d4a7f", "init"),
        ("9b1e6c0d4a7f", "start"),
        ("9b1e6c0d4a7f", "health_status"),
        ("5e8a1c3f7b9d", "start"),
        ("9b1e6c0d4a7f", "health_status"),
        ("9b1e6c0d4a7f", "kill"),
        ("9b1e6c0d4a7f", "died"),
        ("9b1e6c0d4a7f", "cleanup"),
        ("9b1e6c0d4a7f", "stop"),
        ("9b1e6c0d4a7f", "remove"),
    ]
    first = parsed[0]
    assert first is not None and first.labels["jiji.service"] == "api" and first.labels["jiji.project"] == "myapp"
    assert [e.action for e in parsed if e and e.relevant] == [
        "start", "health_status", "start", "health_status", "kill", "died", "cleanup", "stop", "remove"
    ]  # fmt: skip


def test_docker_events_drop_the_state_after_the_verb_and_exec_noise() -> None:
    parsed = [e for e in events("docker-28-events.ndjson") if e]
    assert all(e.container_id == DOCKER_API for e in parsed)
    assert [e.action for e in parsed] == [
        "create", "start", "exec_create", "exec_start", "exec_die", "health_status", "kill", "die", "stop", "destroy"
    ]  # fmt: skip
    assert [e.action for e in parsed if e.relevant] == ["start", "health_status", "kill", "die", "stop", "destroy"]
    assert parsed[0].labels["jiji.instance"] == "blue"


@pytest.mark.parametrize(
    "line",
    ["not json", "[1, 2]", '"start"', '{"Type": "container", "Status": "start"}', '{"Type": "container", "ID": "x"}',
     '{"Type": "container", "ID": "x", "Status": "start", "Attributes": ["a"]}',
     '{"Type": "container", "Action": "start", "Actor": {"Attributes": {}}}'],
)  # fmt: skip
def test_malformed_event_lines_are_refused_with_a_reason(line: str) -> None:
    with pytest.raises(Malformed):
        engine.parse_event(line)


def test_events_of_other_types_are_not_container_events() -> None:
    assert engine.parse_event('{"Type": "image", "Status": "pull", "ID": "sha256:1"}') is None
    assert engine.parse_event('{"Type": "network", "Action": "connect", "Actor": {"ID": "n"}}') is None
    # podman prints null Attributes for some events
    event = engine.parse_event('{"Type": "container", "Status": "remove", "ID": "abc", "Attributes": null}')
    assert event is not None and event.labels == {}


def test_podman_inspect_running_and_healthy() -> None:
    c = container("podman-4.3-inspect-healthy.json")
    assert (c.id, c.name, c.running, c.paused, c.health) == (PODMAN_API, "myapp-api-1", True, False, "healthy")
    assert c.networks == {"jiji": "10.210.0.5"}
    assert c.started_at_ms == 1796184600412  # 2026-12-02T04:10:00.412734913Z
    assert registrations.desired_row(c, LAB0) == (
        Row(PODMAN_API, "api", "myapp", "lab0", "10.210.0.5", "healthy", 1796184600412, "lab0"),
        "registered",
    )


def test_health_mapping() -> None:
    def health(name: str, **state: Any) -> str:
        row, _ = registrations.desired_row(container(name, **state), LAB0)
        assert row is not None
        return row.health_status

    assert health("podman-4.3-inspect-starting.json") == "unknown"
    assert health("podman-4.3-inspect-healthy.json", Health={"Status": "unhealthy"}) == "unhealthy"
    assert health("podman-4.3-inspect-healthy.json", Paused=True, Status="paused") == "unhealthy"
    # podman prints the Health object with an empty Status when there is no check: healthy while running
    assert health("podman-4.3-inspect-no-healthcheck.json") == "healthy"


def test_older_podman_reports_health_under_healthcheck() -> None:
    raw = inspected("podman-4.3-inspect-healthy.json")
    raw["State"]["Healthcheck"] = raw["State"].pop("Health")
    raw["State"]["Healthcheck"]["Status"] = "unhealthy"
    assert engine.parse_container(raw).health == "unhealthy"


def test_instance_label_and_its_default() -> None:
    row, _ = registrations.desired_row(container("podman-4.3-inspect-no-healthcheck.json"), LAB0)
    assert row is not None and (row.service, row.instance_id, row.ip) == ("web", "green", "10.210.0.6")
    row, _ = registrations.desired_row(container("podman-4.3-inspect-healthy.json"), LAB0)
    assert row is not None and row.instance_id == "lab0"


def test_docker_inspect() -> None:
    c = container("docker-28-inspect-healthy.json")
    assert c.name == "myapp-api-blue" and c.health == "healthy" and c.networks == {"jiji": "10.210.1.2"}
    row, _ = registrations.desired_row(c, LAB1)
    assert row == Row(DOCKER_API, "api", "myapp", "lab1", "10.210.1.2", "healthy", 1796184600391, "blue")
    row, _ = registrations.desired_row(container("docker-28-inspect-unhealthy.json"), LAB1)
    assert row is not None and row.health_status == "unhealthy"


@pytest.mark.parametrize(
    ("name", "host", "reason"),
    [
        ("podman-4.3-inspect-exited.json", LAB0, "not running"),
        ("docker-28-inspect-other-network.json", LAB1, "not attached to the jiji network"),
        # a container whose address is in another server's subnet cannot be reached through this one
        (
            "podman-4.3-inspect-healthy.json",
            LAB1,
            "address 10.210.0.5 on jiji is outside this server's subnet 10.210.1.0/24",
        ),
    ],
)
def test_containers_that_get_no_row(name: str, host: Host, reason: str) -> None:
    assert registrations.desired_row(container(name), host) == (None, reason)


def test_labels_that_make_no_dns_name_get_no_row() -> None:
    raw = inspected("podman-4.3-inspect-healthy.json")
    raw["Config"]["Labels"] = {"jiji.project": "my.app", "jiji.service": "api"}
    row, why = registrations.desired_row(engine.parse_container(raw), LAB0)
    assert row is None and "not a DNS label" in why
    raw["Config"]["Labels"] = {"jiji.service": "api"}
    assert registrations.desired_row(engine.parse_container(raw), LAB0)[0] is None
    raw["Config"]["Labels"] = None  # podman prints null for a container without labels
    assert registrations.desired_row(engine.parse_container(raw), LAB0)[0] is None


@pytest.mark.parametrize(
    "change",
    [{"State": "running"}, {"Id": 7}, {"NetworkSettings": {"Networks": {"jiji": {"IPAddress": 5}}}},
     {"State": {"Running": True, "StartedAt": "yesterday"}}, {"Config": {"Labels": ["a=b"]}}],
)  # fmt: skip
def test_malformed_inspect_is_refused(change: dict[str, Any]) -> None:
    raw = inspected("podman-4.3-inspect-healthy.json")
    raw.update(change)
    with pytest.raises(Malformed):
        engine.parse_container(raw)


def test_times_in_any_offset_and_the_zero_time() -> None:
    assert engine.parse_time_ms("2026-12-02T05:10:00.412734913+01:00") == 1796184600412
    assert engine.parse_time_ms("2026-12-02T04:10:00Z") == 1796184600000
    assert engine.parse_time_ms("0001-01-01T00:00:00Z") == 0


def test_inspect_failures_are_told_apart() -> None:
    ok = engine.read_inspect(0, (RECORDED / "docker-28-inspect-healthy.json").read_text(), "")
    assert ok.only_missing and len(ok.elements) == 1
    # docker 28.2.2 CLI: one of two ids unknown
    some = engine.read_inspect(1, "[]\n", "Error response from daemon: No such container: nosuch\n")
    assert some.only_missing and some.elements == []
    # podman 4.3
    assert engine.read_inspect(125, "[]\n", 'Error: no such container "nosuch"\n').only_missing
    # docker 28.2.2 CLI with no daemon: it still prints [] on stdout
    down = engine.read_inspect(
        1, "[]\n", "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?\n"
    )
    assert not down.only_missing
    with pytest.raises(Malformed):
        engine.read_inspect(0, "{", "")
    with pytest.raises(Malformed):
        engine.read_inspect(0, '{"Id": "x"}', "")


def test_engine_commands() -> None:
    assert engine.events_argv("podman") == ["podman", "events", "--format", "json", "--filter", "type=container"]
    assert engine.events_argv("docker") == ["docker", "events", "--format", "{{json .}}", "--filter", "type=container"]
    assert engine.ps_argv("docker") == ["docker", "ps", "-a", "-q", "--no-trunc", "--filter", "label=jiji.service"]
    assert engine.inspect_argv("podman", ["a", "b"]) == ["podman", "container", "inspect", "a", "b"]


ROW = Row(PODMAN_API, "api", "myapp", "lab0", "10.210.0.5", "healthy", 1796184600412, "lab0")


def test_changes_write_only_what_differs() -> None:
    statements, after = registrations.changes({ROW.id: ROW}, {}, "lab0")
    assert [s[0].split()[2] for s in statements if isinstance(s, tuple)] == ["services", "containers"]
    assert after == {ROW.id: ROW}
    assert registrations.changes({ROW.id: ROW}, after, "lab0") == ([], after)
    unhealthy = Row(**{**ROW.__dict__, "health_status": "unhealthy"})
    statements, after = registrations.changes({ROW.id: unhealthy}, after, "lab0")
    assert len(statements) == 2 and after[ROW.id].health_status == "unhealthy"
    statements, after = registrations.changes({ROW.id: None}, after, "lab0")
    assert statements == [("DELETE FROM containers WHERE id = ? AND server_id = ?", [ROW.id, "lab0"])] and after == {}
    # an id with no row wanted and none held: nothing to do
    assert registrations.changes({"gone": None}, {}, "lab0") == ([], {})


def test_reconcile_deletes_own_rows_of_vanished_containers_but_keeps_undecided_ones() -> None:
    held = {
        ROW.id: ROW,
        "vanished": Row("vanished", "api", "myapp", "lab0", "10.210.0.9", "healthy", 1, "lab0"),
        "unreadable": Row("unreadable", "api", "myapp", "lab0", "10.210.0.8", "healthy", 1, "lab0"),
    }
    statements, after = registrations.reconcile({ROW.id: ROW}, {"unreadable"}, held, {("myapp", "api")}, "lab0")
    assert statements == [registrations.delete("vanished", "lab0")]
    assert set(after) == {ROW.id, "unreadable"}


def test_reconcile_restores_a_missing_service_row() -> None:
    statements, _ = registrations.reconcile({ROW.id: ROW}, set(), {ROW.id: ROW}, set(), "lab0")
    assert statements == [
        ("INSERT INTO services (project, name) VALUES (?, ?) ON CONFLICT (project, name) DO NOTHING", ["myapp", "api"])
    ]


def run_sql(db: sqlite3.Connection, statements: list[Statement]) -> int:
    changed = 0
    for s in statements:
        sql, params = (s, []) if isinstance(s, str) else s
        changed += db.execute(sql, params).rowcount
    return changed


def test_statements_on_the_real_schema_never_touch_another_servers_row() -> None:
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA.read_text())
    other = Row("shared-id", "api", "myapp", "lab2", "10.210.2.2", "healthy", 5, "lab2")
    run_sql(db, registrations.upsert(other))
    mine = Row("shared-id", "api", "myapp", "lab0", "10.210.0.2", "unhealthy", 9, "lab0")
    run_sql(db, registrations.upsert(mine))
    run_sql(db, [registrations.delete("shared-id", "lab0")])
    assert db.execute("SELECT server_id, ip FROM containers").fetchall() == [("lab2", "10.210.2.2")]
    # an unchanged row is not rewritten (no new version for Corrosion to gossip)
    run_sql(db, registrations.upsert(ROW))
    assert run_sql(db, registrations.upsert(ROW)[1:]) == 0
    assert run_sql(db, registrations.upsert(Row(**{**ROW.__dict__, "ip": "10.210.0.7"}))[1:]) == 1
    assert db.execute("SELECT project, name FROM services").fetchall() == [("myapp", "api")]
    values = db.execute(registrations.SELECT_OWN, ["lab0"]).fetchall()
    assert [registrations.row_from_db(list(v)) for v in values] == [Row(**{**ROW.__dict__, "ip": "10.210.0.7"})]
