"""Drift (issue 22): the ledger the step library writes, what `jiji-net ready` finds against it,
and `jiji-net repair`. Everything runs in a temporary directory: the library with its state
directory moved there, drift.py with a `root` prefix; systemctl and iptables are stand-ins on PATH
that keep units and chains in files (a restart of jiji-net-network refills the chains as the real
unit does), and log every call."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from jiji_common import layout
from jiji_ops import drift
from jiji_ops.report import Check, drift_checks

from jiji_net import render, zipapps

SYSTEMCTL = r"""#!/bin/sh
echo "systemctl $*" >> "$FAKE/calls"
units="$FAKE/units"
for unit; do :; done
case "$1" in
is-active) state=$(cat "$units/$unit.active" 2>/dev/null || echo inactive); echo "$state"; [ "$state" = active ] ;;
is-enabled) state=$(cat "$units/$unit.enabled" 2>/dev/null || echo disabled); echo "$state"; [ "$state" = enabled ] ;;
show)
    for u; do
        case "$u" in --*|show) continue ;; esac
        printf 'Id=%s.service\nUnitFileState=%s\nActiveState=%s\n\n' "$u" \
            "$(cat "$units/$u.enabled" 2>/dev/null || echo disabled)" "$(cat "$units/$u.active" 2>/dev/null || echo inactive)"
    done ;;
enable) echo enabled > "$units/$unit.enabled" ;;
start|restart)
    [ ! -e "$units/$unit.broken" ] || exit 1
    echo active > "$units/$unit.active"
    if [ "$unit" = jiji-net-network ]; then rm -rf "$FAKE/iptables"; cp -r "$FAKE/iptables.script" "$FAKE/iptables"; fi ;;
esac
"""

IPTABLES = r"""#!/bin/sh
echo "iptables $*" >> "$FAKE/calls"
[ "$1" = -w ] && shift
table=filter
if [ "$1" = -t ]; then table=$2; shift 2; fi
case "$1" in
-S) [ -f "$FAKE/iptables/$table/$2" ] || { echo "iptables: No chain/target/match by that name." >&2; exit 1; }
    cat "$FAKE/iptables/$table/$2" ;;
-C) grep -qx "$2 $4" "$FAKE/iptables/$table/jumps" 2>/dev/null || exit 1 ;;
*) exit 2 ;;
esac
"""

ID = "#!/bin/sh\necho 0\n"

CHAIN = (
    "-N JIJI-INPUT\n"
    "-A JIJI-INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
    "-A JIJI-INPUT -p udp -m udp --dport 51820 -j ACCEPT\n"
    "-A JIJI-INPUT -i jiji0 -j DROP\n"
)
NAT = "-N JIJI-POSTROUTING\n-A JIJI-POSTROUTING -s 10.210.1.0/24 -d 10.210.0.0/16 -j ACCEPT\n"


class Server:
    """A temporary root with the stand-ins: `root` is what drift.py is given."""

    def __init__(self, tmp: Path) -> None:
        self.root = str(tmp / "root")
        self.fake = tmp / "fake"
        (self.fake / "units").mkdir(parents=True)
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        for name, text in (("systemctl", SYSTEMCTL), ("iptables", IPTABLES), ("id", ID)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        self.env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE=str(self.fake))
        # What jiji-net-network's script puts in the kernel.
        script = self.fake / "iptables.script"
        (script / "filter").mkdir(parents=True)
        (script / "nat").mkdir()
        (script / "filter" / "JIJI-INPUT").write_text(CHAIN)
        (script / "filter" / "jumps").write_text("INPUT JIJI-INPUT\n")
        (script / "nat" / "JIJI-POSTROUTING").write_text(NAT)
        (script / "nat" / "jumps").write_text("POSTROUTING JIJI-POSTROUTING\n")

    def path(self, server_path: str) -> Path:
        return Path(self.root + server_path)

    def unit(self, name: str, active: str = "active", enabled: str = "enabled") -> None:
        (self.fake / "units" / f"{name}.active").write_text(active + "\n")
        (self.fake / "units" / f"{name}.enabled").write_text(enabled + "\n")

    def network_up(self) -> None:
        subprocess.run(["systemctl", "restart", "jiji-net-network"], env=self.env, check=True)

    def calls(self) -> list[str]:
        calls = self.fake / "calls"
        return calls.read_text().splitlines() if calls.exists() else []

    def forget_calls(self) -> None:
        (self.fake / "calls").unlink(missing_ok=True)

    def library(self) -> Path:
        """The step library with every server path under root (the state directory, the ledgers)."""
        helper = Path(self.root).parent / "jiji-step.pyz"
        helper.write_bytes(zipapps.build("step"))
        text = render.step_library(str(helper), hashlib.sha256(helper.read_bytes()).hexdigest())
        lib = Path(self.root).parent / "lib.sh"
        lib.write_text(text.replace(layout.STATE_DIR, self.root + layout.STATE_DIR))
        return lib

    def step(self, lib: Path, body: str, action: str = "apply", step: str = "dns") -> subprocess.CompletedProcess[str]:
        """A step named `step` whose apply is `body` (paths in it are server paths; R is root)."""
        script = (
            f"set -eu\nSTEP={step}\nOWNER=web1-{step}\nR={self.root}\n. {lib}\nSTAMP=$STATE/steps/$STEP\n"
            f"apply() {{\n{body}\n}}\nremove() {{ :; }}\nmain {action}\n"
        )
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=self.env, timeout=60)


@pytest.fixture()
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Server:
    s = Server(tmp_path)
    monkeypatch.setenv("PATH", s.env["PATH"])
    monkeypatch.setenv("FAKE", s.env["FAKE"])
    drift._hashes.clear()
    return s


# The server's paths, as the library renders them (some tests point layout at root).
LEDGERS, KEPT = layout.LEDGERS, layout.KEPT
CONF = "/etc/wireguard/jiji0.conf"
UNIT_FILE = f"{layout.SYSTEMD_UNITS}/jiji-dns.service"
TOOL_UPLOAD = f"{layout.STAGING}/jiji-net.0123456789abcdef"


def deploy(server: Server) -> Path:
    """What a `pulumi up` leaves, through the real library: files, a binary from an upload, units,
    the chains (the network step's lines) and their ledgers."""
    lib = server.library()
    server.path(TOOL_UPLOAD).parent.mkdir(parents=True)
    server.path(TOOL_UPLOAD).write_bytes(b"#!/usr/bin/env python3\nthe tool\n")
    body = f"""
    printf '[Interface]\\nAddress = 10.210.1.1/16\\n' | put_file "$R{CONF}" 600
    printf '[Unit]\\nDescription=dns\\n' | put_file "$R{UNIT_FILE}" 644
    install_staged "$R{TOOL_UPLOAD}" "$R{layout.TOOL}"
    unit_running jiji-dns no
    """
    run = server.step(lib, body)
    assert run.returncode == 0, run.stderr
    network = """
    unit_running jiji-net-network yes
    chain_record filter JIJI-INPUT
    chain_record nat JIJI-POSTROUTING
    jump_record filter INPUT JIJI-INPUT
    jump_record nat POSTROUTING JIJI-POSTROUTING
    """
    run = server.step(lib, network, step="network")
    assert run.returncode == 0, run.stderr
    return lib


def test_the_library_writes_a_ledger_and_keeps_what_put_file_wrote(server: Server) -> None:
    deploy(server)
    ledger = server.path(f"{LEDGERS}/dns").read_text().splitlines()
    conf_sha = hashlib.sha256(b"[Interface]\nAddress = 10.210.1.1/16\n").hexdigest()
    tool_sha = hashlib.sha256(server.path(TOOL_UPLOAD).read_bytes()).hexdigest()
    assert ledger[0] == "owner web1-dns"
    assert f"file {server.root}{CONF} 600 {conf_sha}" in ledger
    assert f"file {server.root}{layout.TOOL} 755 {tool_sha} {server.root}{TOOL_UPLOAD}" in ledger
    assert ledger[-1] == "unit jiji-dns"
    kept = server.path(f"{KEPT}/{conf_sha}")
    assert kept.read_bytes() == server.path(CONF).read_bytes() and kept.stat().st_mode & 0o777 == 0o600
    assert server.path(KEPT).stat().st_mode & 0o777 == 0o700
    assert not server.path(f"{KEPT}/{tool_sha}").exists()  # uploads are not copied
    network = server.path(f"{LEDGERS}/network").read_text().splitlines()
    chain_sha = hashlib.sha256(CHAIN.encode()).hexdigest()
    assert f"chain filter JIJI-INPUT {chain_sha}" in network and "jump nat POSTROUTING JIJI-POSTROUTING" in network
    assert server.path(f"{KEPT}/{chain_sha}").read_text() == CHAIN
    assert sorted(os.listdir(server.path(LEDGERS))) == ["dns", "network"]


def test_a_failed_apply_keeps_the_last_good_ledger_and_its_copies(server: Server) -> None:
    lib = deploy(server)
    before = server.path(f"{LEDGERS}/dns").read_text()
    run = server.step(lib, f"""printf 'other\\n' | put_file "$R{CONF}" 600\n    fail 'the unit did not start'""")
    assert run.returncode == 1 and "the unit did not start" in run.stderr
    assert server.path(f"{LEDGERS}/dns").read_text() == before
    old_sha = before.split()[5]
    assert server.path(f"{KEPT}/{old_sha}").exists()


def test_copies_no_ledger_names_go_and_remove_leaves_nothing(server: Server) -> None:
    lib = deploy(server)
    first = set(os.listdir(server.path(KEPT)))
    run = server.step(lib, f"""printf 'new content\\n' | put_file "$R{CONF}" 600""")
    assert run.returncode == 0, run.stderr
    now = set(os.listdir(server.path(KEPT)))
    new_sha = hashlib.sha256(b"new content\n").hexdigest()
    # The dns step's old copies went; the network step's chain copies stay.
    assert new_sha in now and now - {new_sha} < first and len(now) == 3
    for step in ("dns", "network"):
        run = server.step(lib, ":", action="remove", step=step)
        assert run.returncode == 0, run.stderr
    assert os.listdir(server.path(LEDGERS)) == [] and os.listdir(server.path(KEPT)) == []


def test_an_upload_gone_by_the_end_of_the_run_is_not_named_as_a_source(server: Server) -> None:
    """A binary taken out of a release archive is installed from a file the step deletes; an
    upload that stays is named."""
    lib = server.library()
    body = f"""
    mkdir -p "$R{layout.STAGING}"
    printf 'binary\\n' > "$R{layout.STAGING}/corrosion.bin"
    install_staged "$R{layout.STAGING}/corrosion.bin" "$R{layout.CORROSION_BINARY}"
    rm -f "$R{layout.STAGING}/corrosion.bin"
    printf 'pyz\\n' > "$R{layout.STAGING}/jiji-dns.1"
    install_staged "$R{layout.STAGING}/jiji-dns.1" "$R{layout.DNS_PYZ}"
    """
    run = server.step(lib, body, step="corrosion")
    assert run.returncode == 0, run.stderr
    lines = server.path(f"{LEDGERS}/corrosion").read_text().splitlines()
    binary, pyz = hashlib.sha256(b"binary\n").hexdigest(), hashlib.sha256(b"pyz\n").hexdigest()
    assert lines[1:] == [
        f"file {server.root}{layout.CORROSION_BINARY} 755 {binary}",
        f"file {server.root}{layout.DNS_PYZ} 755 {pyz} {server.root}{layout.STAGING}/jiji-dns.1",
    ]


def test_chains_are_compared_with_the_last_record_so_an_up_refills_changed_ones(server: Server) -> None:
    lib = deploy(server)
    check = server.step(lib, "chains_as_recorded", step="network")
    assert check.returncode == 0, check.stderr
    rule = server.fake / "iptables" / "filter" / "JIJI-INPUT"
    rule.write_text(CHAIN.replace("-A JIJI-INPUT -i jiji0 -j DROP\n", ""))
    assert server.step(lib, "chains_as_recorded", step="network").returncode != 0
    rule.write_text(CHAIN)
    (server.fake / "iptables" / "filter" / "jumps").write_text("")
    assert server.step(lib, "chains_as_recorded", step="network").returncode != 0


def ledgers_at_root(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The library recorded paths under root already; drift.py reads them with no prefix."""
    monkeypatch.setattr(layout, "LEDGERS", server.root + LEDGERS)
    monkeypatch.setattr(layout, "KEPT", server.root + KEPT)


def test_nothing_drifted_right_after_an_up(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    deploy(server)
    ledgers_at_root(server, monkeypatch)
    survey = drift.survey()
    assert survey.findings == [] and survey.checked == {"file": 3, "unit": 2, "chain": 2} and survey.ledgers == 2
    assert drift_checks(survey) == [Check("drift", True, "3 files, 2 units, 2 chains as the last pulumi up left them")]


def test_ready_names_each_drift_and_repair_puts_back_only_that(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab test in small: a line appended to jiji0.conf, jiji-dns stopped, a rule deleted from
    JIJI-INPUT."""
    deploy(server)
    ledgers_at_root(server, monkeypatch)
    conf = server.path(CONF)
    good = conf.read_bytes()
    with open(conf, "a") as f:
        f.write("# hand edit\n")
    server.unit("jiji-dns", active="inactive")
    chain = server.fake / "iptables" / "filter" / "JIJI-INPUT"
    chain.write_text(CHAIN.replace("-A JIJI-INPUT -p udp -m udp --dport 51820 -j ACCEPT\n", ""))
    untouched = server.path(UNIT_FILE).stat().st_mtime_ns, server.path(layout.TOOL).stat().st_mtime_ns

    found = drift.findings()
    assert [(f.kind, f.name, f.problem) for f in found] == [
        ("chain", "JIJI-INPUT", "changed (missing: -A JIJI-INPUT -p udp -m udp --dport 51820 -j ACCEPT)"),
        ("file", server.root + CONF, "changed"),
        ("unit", "jiji-dns", "stopped (inactive)"),
    ]
    for f in found:
        assert "jiji-net repair" in f.remedy and f"pulumi up --replace <URN of web1-{f.step}>" in f.remedy
    checks = drift_checks(drift.survey())
    assert [c.name for c in checks if not c.ok] == [
        "drift chain JIJI-INPUT",
        f"drift file {server.root}{CONF}",
        "drift unit jiji-dns",
    ]

    # A look (what each scrape of `jiji-net metrics` does) asks systemctl once for every unit.
    server.forget_calls()
    drift.findings()
    units_asked = [c for c in server.calls() if c.startswith("systemctl")]
    assert units_asked == ["systemctl show --property=Id,UnitFileState,ActiveState jiji-net-network jiji-dns"], units_asked

    server.forget_calls()
    result = drift.repair()
    assert result.failed == [] and result.remaining == []
    assert result.done == [
        f"restored {server.root}{CONF} (from its kept copy)",
        "systemctl start jiji-dns",
        "systemctl restart jiji-net-network",
    ]
    assert conf.read_bytes() == good and conf.stat().st_mode & 0o777 == 0o600
    assert chain.read_text() == CHAIN
    assert drift.findings() == []
    changes = [c for c in server.calls() if c.split()[1] not in ("is-active", "is-enabled", "show", "-w")]
    assert changes == [
        "systemctl reset-failed jiji-dns",
        "systemctl start jiji-dns",
        "systemctl restart jiji-net-network",
    ]
    assert (server.path(UNIT_FILE).stat().st_mtime_ns, server.path(layout.TOOL).stat().st_mtime_ns) == untouched


def test_mode_missing_files_disabled_units_and_jumps(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    deploy(server)
    ledgers_at_root(server, monkeypatch)
    server.path(CONF).chmod(0o644)
    server.path(UNIT_FILE).unlink()
    server.path(layout.TOOL).write_text("not the tool\n")
    server.unit("jiji-dns", enabled="disabled")
    (server.fake / "iptables" / "nat" / "jumps").write_text("")
    found = {(f.kind, f.name): f.problem for f in drift.findings()}
    assert found == {
        ("file", server.root + CONF): "mode 644, not 600",
        ("file", server.root + UNIT_FILE): "missing",
        ("file", server.root + layout.TOOL): "changed",
        ("unit", "jiji-dns"): "disabled",
        ("chain", "JIJI-POSTROUTING"): "jump from POSTROUTING missing",
    }
    server.forget_calls()
    result = drift.repair()
    assert result.failed == [] and drift.findings() == []
    assert f"restored {server.root}{layout.TOOL} (from its upload)" in result.done
    assert server.path(layout.TOOL).read_bytes() == server.path(TOOL_UPLOAD).read_bytes()
    assert server.path(layout.TOOL).stat().st_mode & 0o777 == 0o755
    # A unit file came back: systemd reads it again before anything starts.
    assert result.done.index("systemctl daemon-reload") < result.done.index("systemctl enable jiji-dns")
    assert "systemctl start jiji-dns" not in result.done  # it was running


def test_what_cannot_be_restored_fails_repair_and_says_to_use_pulumi(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploy(server)
    ledgers_at_root(server, monkeypatch)
    server.path(CONF).write_text("hand made\n")
    for copy in server.path(KEPT).iterdir():
        if copy.read_bytes().startswith(b"[Interface]"):
            copy.unlink()
    server.path(layout.TOOL).write_text("not the tool\n")
    server.path(TOOL_UPLOAD).write_text("a damaged upload\n")  # its SHA-256 does not match: not used
    (found_conf, found_tool) = drift.findings()
    assert found_conf.remedy.startswith(
        "its kept copy or upload is gone, so only Pulumi puts it back: `pulumi up --replace"
    )
    assert "web1-dns" in found_tool.remedy
    result = drift.repair()
    assert result.done == []
    assert [line.split(":")[0] for line in result.failed] == [server.root + CONF, server.root + layout.TOOL]
    assert server.path(CONF).read_text() == "hand made\n" and server.path(layout.TOOL).read_text() == "not the tool\n"


def test_a_unit_that_does_not_start_fails_repair(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    deploy(server)
    ledgers_at_root(server, monkeypatch)
    server.unit("jiji-dns", active="failed")
    (server.fake / "units" / "jiji-dns.broken").write_text("")
    result = drift.repair()
    assert result.failed and any("jiji-dns" in line for line in result.failed)
    assert [f.name for f in result.remaining] == ["jiji-dns"]


def test_root_prefixes_every_path(server: Server) -> None:
    """findings(root) as a monitor calls it, on a ledger with server paths."""
    ledgers = server.path(LEDGERS)
    ledgers.mkdir(parents=True)
    server.path(CONF).parent.mkdir(parents=True)
    server.path(CONF).write_text("x\n")
    server.path(CONF).chmod(0o600)
    x = hashlib.sha256(b"x\n").hexdigest()
    (ledgers / "wireguard").write_text(f"owner web1-wireguard\nfile {CONF} 600 {x}\n")
    assert drift.findings(server.root) == []
    server.path(CONF).write_text("y\n")
    assert [(f.kind, f.name, f.step) for f in drift.findings(server.root)] == [("file", CONF, "wireguard")]


def test_a_ledger_line_that_is_no_known_kind_is_refused() -> None:
    assert drift.parse_ledger("dns", "owner a\nunit b\n").units == ("b",)
    with pytest.raises(ValueError, match="ledger of the dns step, line 2"):
        drift.parse_ledger("dns", "owner a\nfile /x 644\n")


def test_no_ledger_yet_is_not_drift(server: Server) -> None:
    survey = drift.survey(server.root)
    assert survey.findings == [] and drift_checks(survey)[0].ok
