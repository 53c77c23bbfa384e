"""The two host zipapps: what each carries, so a change restarts only what runs it."""

from __future__ import annotations

import io
import zipfile

import build_zipapp


def packages_in(tool: bool) -> set[str]:
    data = build_zipapp.build(tool)
    archive = zipfile.ZipFile(io.BytesIO(data[len(build_zipapp.SHEBANG) :]))
    return {name.split("/", 1)[0] for name in archive.namelist() if "/" in name}


def test_the_tool_carries_no_daemon_code_and_the_daemon_no_tool_code() -> None:
    # Before: the tool carried jiji_dns for three helpers, so a daemon-only change gave
    # jiji-net.pyz new bytes and restarted the registrar and the rejoin watch on every server.
    assert packages_in(tool=True) == {"jiji_ops", "jiji_common"}
    assert packages_in(tool=False) == {"jiji_dns", "jiji_common", "dnslib"}


def test_builds_are_byte_for_byte_the_same() -> None:
    assert build_zipapp.build(tool=True) == build_zipapp.build(tool=True)
    assert build_zipapp.build(tool=False) == build_zipapp.build(tool=False)
