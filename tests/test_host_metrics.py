"""`jiji-net metrics`: what one scrape says about a server, from gathered facts (pure), in text
promtool accepts; and the daemons' counter files it reads."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from jiji_common.counters import CounterFile, read
from jiji_ops.exporter import HostSample, listen_address, peer_kind, render
from jiji_ops.sources import HostConfig
from jiji_ops.wg import parse_dump

DUMP = "\t".join(["(hidden)", "SELFKEY=", "51820", "off"]) + "\n" + "\n".join(
    "\t".join(fields)
    for fields in (
        ["LAB1KEY=", "(none)", "198.18.0.11:51820", "10.210.1.0/24", "1760000000", "1200", "3400", "25"],
        ["LAPTOPKEY=", "(none)", "198.18.0.240:40000", "10.211.0.9/32", "0", "0", "148", "off"],
    )
)


def sample(**changes: object) -> HostSample:
    base = HostSample(
        server="lab0",
        wireguard=parse_dump(DUMP),
        peer_names={"LAB1KEY=": "lab1", "LAPTOPKEY=": "ci-runner"},
        access_cidr="10.211.0.0/16",
        units={"jiji-dns": ("active", 0), "jiji-registrar": ("failed", 3)},
        api_up=True,
        members=2,
        servers=3,
        containers={"healthy": 2, "unhealthy": 1},
        registrar={"events": 7, "errors": 1},
        rejoin={"restarts": 1},
        jit={"installs": 4, "refusals": {"unknown-key": 9, "replay": 1}, "removals": {"idle": 2}},
        drift={"file": 1, "unit": 1},
        seconds=0.012,
    )
    return HostSample(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def lines(text: str) -> set[str]:
    return {line for line in text.splitlines() if not line.startswith("#")}


def test_one_scrape_says_what_the_issue_asks() -> None:
    got = lines(render(sample()))
    assert 'jiji_wireguard_peer_last_handshake_timestamp_seconds{peer="lab1",kind="server",public_key="LAB1KEY="} 1760000000' in got
    assert 'jiji_wireguard_peer_last_handshake_timestamp_seconds{peer="ci-runner",kind="access",public_key="LAPTOPKEY="} 0' in got
    assert 'jiji_wireguard_peer_receive_bytes_total{peer="lab1",kind="server",public_key="LAB1KEY="} 1200' in got
    assert 'jiji_wireguard_peer_info{peer="lab1",kind="server",public_key="LAB1KEY=",endpoint="198.18.0.11:51820"} 1' in got
    assert "jiji_mesh_servers 3" in got and "jiji_corrosion_members 2" in got
    assert 'jiji_unit_active{unit="jiji-registrar"} 0' in got and 'jiji_unit_restarts_total{unit="jiji-registrar"} 3' in got
    assert 'jiji_containers{health="unhealthy"} 1' in got
    assert "jiji_registrar_errors_total 1" in got and "jiji_rejoin_restarts_total 1" in got
    assert 'jiji_jit_refusals_total{reason="unknown-key"} 9' in got and 'jiji_jit_removals_total{reason="idle"} 2' in got
    assert {'jiji_drift_items{kind="file"} 1', 'jiji_drift_items{kind="unit"} 1', 'jiji_drift_items{kind="chain"} 0'} <= got


def test_what_is_unknown_is_left_out_not_zero() -> None:
    """A registry that cannot be read must not report 0 servers (the members alert would compare
    with nothing); daemons not running here have no counters."""
    text = render(sample(servers=None, members=None, registrar=None, rejoin=None, jit=None, drift=None, wireguard=None))
    got = lines(text)
    for name in ("jiji_mesh_servers", "jiji_corrosion_members", "jiji_registrar_", "jiji_jit_", "jiji_drift_items"):
        assert not any(line.startswith(name) for line in got), name
    assert "jiji_wireguard_up 0" in got


def test_promtool_accepts_the_text() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run `bash lab/toolchain.sh packages` (Debian's prometheus package)"
    text = render(sample()).encode()
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def test_peer_kinds_follow_the_access_range() -> None:
    assert peer_kind(("10.211.0.9/32",), "10.211.0.0/16") == "access"
    assert peer_kind(("10.210.1.0/24",), "10.211.0.0/16") == "server"
    assert peer_kind(("10.211.0.9/32",), None) == "server"


def test_listen_defaults_to_the_mesh_address() -> None:
    host = HostConfig(server="lab0", mesh_address="10.210.0.1", subnet="10.210.0.0/24", container_engine="none",
                      domain="jiji", corrosion_api="127.0.0.1:9220")  # fmt: skip
    assert listen_address(None, host) == ("10.210.0.1", 9480)
    assert listen_address("10.210.0.1:9999", host) == ("10.210.0.1", 9999)


def test_counter_files_are_written_whole_and_soon(tmp_path: Path) -> None:
    path = tmp_path / "run" / "counters.json"
    counters = CounterFile(path).start()
    assert read(path) == {}
    counters.add("errors")
    counters.add("refusals", "replay", 2)
    deadline = time.monotonic() + 3
    while read(path) != {"errors": 1, "refusals": {"replay": 2}} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert read(path) == {"errors": 1, "refusals": {"replay": 2}}
    assert read(tmp_path / "absent.json") is None


def test_units_come_from_one_systemctl_show_and_absent_ones_are_left_out() -> None:
    from jiji_ops.sources import parse_systemctl_show

    text = (
        "Id=jiji-dns.service\nLoadState=loaded\nActiveState=active\nNRestarts=2\n\n"
        "Id=jiji-jit.service\nLoadState=not-found\nActiveState=inactive\nNRestarts=0\n\n"
        "LoadState=loaded\n"
    )
    shown = parse_systemctl_show(text)
    assert set(shown) == {"jiji-dns", "jiji-jit"} and shown["jiji-dns"]["NRestarts"] == "2"
