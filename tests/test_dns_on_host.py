"""jiji-dns as servers run it: the zipapp under its systemd unit on a lab host that has only python3."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from jiji_net import render
from tests.conftest import Lab


def render_unit(**values: object) -> str:
    return render.template_file("jiji-dns.service.j2", **values)


def test_unit_starts_notifies_and_answers(lab: Lab, workdir: Path) -> None:
    pyz = workdir / "host-jiji-dns.pyz"
    subprocess.run(
        [sys.executable, "-m", "jiji_net.zipapps", "dns", str(pyz)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    unit = render_unit(
        install_path="/usr/local/lib/jiji/jiji-dns.pyz",
        listen=["127.0.0.1:53", f"{lab.ip(0)}:53"],
        corrosion_api="127.0.0.1:9220",
        domain="jiji",
        ttl=60,
        recursion_from=["10.210.0.0/16", "127.0.0.0/8", "198.18.0.0/24"],
        after_units=[],
    )
    assert "Type=notify" in unit and "0.0.0.0" not in unit
    try:
        assert lab.run(0, "python3 -c 'import dnslib' 2>&1 || true").strip().endswith("No module named 'dnslib'")
        lab.run(0, "mkdir -p /usr/local/lib/jiji && cat > /usr/local/lib/jiji/jiji-dns.pyz", stdin=pyz.read_bytes())
        lab.run(0, "cat > /etc/systemd/system/jiji-dns.service && systemctl daemon-reload", stdin=unit)
        lab.run(0, "systemctl start jiji-dns")  # returns only once the daemon sent READY=1
        assert lab.run(0, "systemctl is-active jiji-dns").strip() == "active"
        # No Corrosion on this host: the domain is SERVFAIL (never NXDOMAIN), other names are forwarded.
        assert "status: SERVFAIL" in lab.run(0, "dig @127.0.0.1 shop-api.jiji +tries=1 +time=2")
        assert lab.run(1, f"dig +short @{lab.ip(0)} www.lab.test").strip() == "198.18.0.200"
        stats = lab.run(
            0,
            'python3 -c "import socket;s=socket.socket(socket.AF_UNIX);'
            "s.connect('/run/jiji-dns/stats.sock');print(s.recv(65536).decode())\"",
        )
        assert '"forwarded": 1' in stats and '"ready": false' in stats
        lab.run(0, "systemctl stop jiji-dns")
        assert "event=stopping" in lab.run(0, "journalctl -u jiji-dns --no-pager")
    finally:
        lab.run(
            0,
            "systemctl stop jiji-dns; rm -f /etc/systemd/system/jiji-dns.service /usr/local/lib/jiji/jiji-dns.pyz;"
            " systemctl daemon-reload",
            check=False,
        )
