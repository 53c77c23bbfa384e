"""jiji-dns follows a real Corrosion node through changes, restarts and lost change history."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jiji_dns import config as config_mod

from tests import harness
from tests.conftest import dig


@pytest.fixture
def node(workdir: Path, request: pytest.FixtureRequest) -> Iterator[harness.CorrosionNode]:
    n = harness.CorrosionNode(workdir / f"corrosion-{request.node.name}")
    yield n
    if n.proc is not None:
        n.proc.kill()  # its data is thrown away: no need for the agent's 5 s graceful stop
        n.proc.wait(5)
        n.proc = None
    n.close()


@pytest.fixture
def proxy(node: harness.CorrosionNode) -> Iterator[harness.CuttableProxy]:
    p = harness.CuttableProxy(node.api_port)
    yield p
    p.close()


@pytest.fixture
def dnsd(pyz: Path, workdir: Path, proxy: harness.CuttableProxy) -> Iterator[harness.DnsDaemon]:
    d = harness.DnsDaemon(pyz, workdir, proxy.address)
    d.wait_ready()
    yield d
    d.close()


def answers(d: harness.DnsDaemon, name: str) -> list[str]:
    return sorted(a[2] for a in dig(d.port, name, "A", "+tcp").answers)


def eventually(d: harness.DnsDaemon, name: str, expected: list[str], timeout: float = 2.0) -> None:
    harness.wait_until(lambda: answers(d, name) == expected, timeout, f"{name} -> {expected}")


def test_insert_update_health_and_delete_show_up_in_answers(
    node: harness.CorrosionNode, dnsd: harness.DnsDaemon
) -> None:
    node.add_container("a", "shop", "api", "s1", "10.210.0.2", 1)
    eventually(dnsd, "shop-api.jiji", ["10.210.0.2"])
    node.add_container("b", "shop", "api", "s2", "10.210.1.2", 1)
    eventually(dnsd, "shop-api.jiji", ["10.210.0.2", "10.210.1.2"])
    node.execute(["UPDATE containers SET ip = ? WHERE id = ?", ["10.210.0.3", "a"]])
    eventually(dnsd, "shop-api.jiji", ["10.210.0.3", "10.210.1.2"])
    node.execute(["UPDATE containers SET health_status = 'unhealthy' WHERE id = ?", ["b"]])
    eventually(dnsd, "shop-api.jiji", ["10.210.0.3"])
    node.execute(["UPDATE containers SET health_status = 'healthy' WHERE id = ?", ["b"]])
    eventually(dnsd, "shop-api.jiji", ["10.210.0.3", "10.210.1.2"])
    node.add_container("a2", "shop", "api", "s1", "10.210.0.4", 2)  # newer container on s1 wins
    eventually(dnsd, "shop-api.jiji", ["10.210.0.4", "10.210.1.2"])
    node.execute(["DELETE FROM containers WHERE id IN (?, ?, ?)", ["a", "a2", "b"]])
    eventually(dnsd, "shop-api.jiji", [])
    assert dig(dnsd.port, "shop-api.jiji").status == "NXDOMAIN"
    assert dnsd.stats()["hints_applied"] > 0, "update notifications took the fast path"


def test_answers_continue_from_cache_while_corrosion_is_away(
    node: harness.CorrosionNode, proxy: harness.CuttableProxy, dnsd: harness.DnsDaemon
) -> None:
    node.add_container("a", "shop", "api", "s1", "10.210.0.2", 1)
    eventually(dnsd, "shop-api.jiji", ["10.210.0.2"])
    proxy.cut()
    harness.wait_until(lambda: dnsd.stats()["subscription_state"] != "live", 5, "the daemon to notice")
    assert answers(dnsd, "shop-api.jiji") == ["10.210.0.2"]
    proxy.restore()


def test_restarting_corrosion_while_rows_are_deleted_leaves_no_stale_answer(
    node: harness.CorrosionNode, proxy: harness.CuttableProxy, dnsd: harness.DnsDaemon
) -> None:
    for i in range(5):
        node.add_container(f"c{i}", "shop", "api", f"s{i}", f"10.210.{i}.2", 1)
    eventually(dnsd, "shop-api.jiji", sorted(f"10.210.{i}.2" for i in range(5)))
    before = dnsd.stats()
    node.stop()
    harness.wait_until(lambda: dnsd.stats()["subscription_state"] != "live", 5, "the daemon to notice")
    node.start()
    node.execute("DELETE FROM containers WHERE id IN ('c0', 'c1', 'c2')")
    eventually(dnsd, "shop-api.jiji", ["10.210.3.2", "10.210.4.2"], timeout=15)
    after = dnsd.stats()
    assert after["reconnects"] > before["reconnects"]
    time.sleep(0.5)
    assert answers(dnsd, "shop-api.jiji") == ["10.210.3.2", "10.210.4.2"]


def test_a_corrosion_restart_is_followed_again_within_the_reconnect_cap(
    node: harness.CorrosionNode, dnsd: harness.DnsDaemon
) -> None:
    # The rejoin watch restarts Corrosion after a healed partition (SIGKILL, then start): the
    # daemon, with its default backoff, follows the node again within its reconnect cap plus
    # jitter (half of it) once the API is back, plus 1 s for a snapshot on a loaded machine. It
    # used to wait 5-6 s and, when the API was not back by then, 10 s more (a heal took 9.3 s).
    # The design (docs/jiji-dns.md, --reconnect-interval): the cap is 2 s with the default interval.
    assert config_mod.load(["--listen", "127.0.0.1:53"]).reconnect_max == 2.0
    deadline = 2.0 * 1.5 + 1.0
    node.add_container("a", "shop", "api", "s1", "10.210.0.2", 1)
    eventually(dnsd, "shop-api.jiji", ["10.210.0.2"])
    assert node.proc is not None
    node.proc.kill()
    node.proc.wait(5)
    node.proc = None
    harness.wait_until(lambda: dnsd.stats()["subscription_state"] != "live", 5, "the daemon to notice")
    node.start()
    node.add_container("b", "shop", "api", "s2", "10.210.1.2", 1)
    eventually(dnsd, "shop-api.jiji", ["10.210.0.2", "10.210.1.2"], timeout=deadline)


def test_lost_change_history_forces_a_full_resync(
    node: harness.CorrosionNode, proxy: harness.CuttableProxy, dnsd: harness.DnsDaemon
) -> None:
    node.add_container("keep", "shop", "api", "s1", "10.210.0.2", 1)
    node.add_container("gone", "shop", "web", "s1", "10.210.0.5", 1)
    eventually(dnsd, "shop-web.jiji", ["10.210.0.5"])
    proxy.cut()
    harness.wait_until(lambda: dnsd.stats()["subscription_state"] != "live", 5, "the daemon to notice")
    # More changes than the node keeps per subscription (500: distinct rows, so none coalesce),
    # then a restart, which purges the older ones: resuming from our last change id must fail.
    node.execute("INSERT INTO services (project, name) VALUES ('shop', 'bulk')")
    for k in range(0, 700, 100):
        node.execute(
            *[
                [
                    "INSERT INTO containers (id, service, project, server_id, ip) VALUES (?, 'bulk', 'shop', ?, ?)",
                    [f"n{k + j}", f"s{k + j}", f"10.210.1.{(k + j) % 250 + 2}"],
                ]
                for j in range(100)
            ]
        )
    node.execute("DELETE FROM containers WHERE id = 'gone'")
    sub_id = dnsd.stats()["subscription_id"]
    # The node records subscription changes in batches (up to 600 ms): restart only once it has.
    harness.wait_until(
        lambda: "change" in (node.first_resume_event(sub_id, 700) or {}), 20, "the node to record the changes"
    )
    node.restart()

    def history_lost() -> bool:
        # Either the restarted node purged all but the last 500 changes, or (when it found no
        # listener) dropped the subscription: resuming from our change id cannot work either way.
        event = node.first_resume_event(sub_id, 1) or {}
        return "error" in event or event.get("http_status") == 404

    harness.wait_until(history_lost, 20, "the node to lose the old changes")
    resyncs = dnsd.stats()["resyncs"]
    proxy.restore()
    harness.wait_until(lambda: dnsd.stats()["resyncs"] > resyncs, 15, "a resync")
    eventually(dnsd, "shop-web.jiji", [], timeout=15)
    assert answers(dnsd, "shop-api.jiji") == ["10.210.0.2"]
    assert dnsd.stats()["cache_containers"] == 701
    log = dnsd.log()
    assert "subscription already deleted older changes" in log or "resume answered HTTP 404" in log


def test_a_change_the_subscription_never_delivers_is_applied_by_the_re_read_after_a_reconnect(
    pyz: Path, workdir: Path, node: harness.CorrosionNode
) -> None:
    # klukai batches subscription changes for up to 600 ms; a delete made just before a restart
    # never reaches subscribers (seen; when exactly is a race). Here the loss is made certain:
    # the proxy drops every change event of the resumed stream and the node has no /v1/updates,
    # so after the reconnect only the daemon's re-read of the whole result can remove 'b'.
    lossy = harness.LossyProxy(node.api)
    d = harness.DnsDaemon(pyz, workdir, lossy.address)
    try:
        d.wait_ready()
        node.add_container("a", "shop", "api", "s1", "10.210.0.2", 1)
        node.add_container("b", "shop", "api", "s2", "10.210.1.2", 1)
        # Both arrive by the subscription (klukai's batch: up to 600 ms; 5 s is ample).
        eventually(d, "shop-api.jiji", ["10.210.0.2", "10.210.1.2"], timeout=5)
        lossy.lose_changes = True
        lossy.cut()
        harness.wait_until(lambda: d.stats()["subscription_state"] != "live", 5, "the daemon to notice")
        before = d.stats()
        node.execute("DELETE FROM containers WHERE id = 'b'")
        lossy.restore()
        # The resume comes within the reconnect delay (200 ms, doubled at most twice here), the
        # re-read right after it: 5 s is far more than the design needs.
        eventually(d, "shop-api.jiji", ["10.210.0.2"], timeout=5)
        after = d.stats()
        assert after["resyncs"] == before["resyncs"], "a fresh snapshot, not the re-read, removed the row"
        assert after["reconciled"] == before["reconciled"] + 1
        # The node does send the delete on the resumed stream (batched: up to 600 ms); it is lost.
        harness.wait_until(lambda: lossy.dropped >= 1, 5, "the delete's change event (dropped on the way)")
        assert any(r.startswith("GET /v1/subscriptions/") for r in lossy.requests), "no resume"
    finally:
        d.close()
        lossy.close()
