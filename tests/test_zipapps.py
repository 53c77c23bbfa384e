"""The host zipapps: what each carries, so a change restarts only what runs it."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

from jiji_net import zipapps


def packages_in(kind: str) -> set[str]:
    data = zipapps.build(kind)
    archive = zipfile.ZipFile(io.BytesIO(data[len(zipapps.SHEBANG) :]))
    return {name.split("/", 1)[0] for name in archive.namelist() if "/" in name}


def test_each_zipapp_carries_only_what_it_runs() -> None:
    # Before: the tool carried jiji_dns for three helpers, so a daemon-only change gave
    # jiji-net.pyz new bytes and restarted the registrar and the rejoin watch on every server.
    assert packages_in("tool") == {"jiji_ops", "jiji_common"}
    assert packages_in("dns") == {"jiji_dns", "jiji_common", "dnslib"}
    assert packages_in("step") == {"jiji_step", "jiji_common"}


def test_the_step_helper_carries_only_the_shared_modules_it_imports() -> None:
    # Its hash is in every step: a change to the label rules or the log line, which it does not
    # use, would otherwise re-run every step on every server.
    archive = zipfile.ZipFile(io.BytesIO(zipapps.build("step")[len(zipapps.SHEBANG) :]))
    shared = {n for n in archive.namelist() if n.startswith("jiji_common/")}
    assert shared == {"jiji_common/__init__.py", "jiji_common/layout.py", "jiji_common/digest.py", "jiji_common/files.py"}
    imported = set()
    for name in archive.namelist():
        if name.startswith("jiji_step/"):
            text = archive.read(name).decode()
            imported |= {f"jiji_common/{m}.py" for m in ("layout", "digest", "files", "names", "logline") if f"jiji_common.{m}" in text or f"jiji_common import {m}" in text}
    assert imported <= shared, imported - shared


def test_builds_are_byte_for_byte_the_same() -> None:
    for kind in zipapps.KINDS:
        assert zipapps.build(kind) == zipapps.build(kind)


def test_each_zipapp_runs_with_only_the_standard_library(tmp_path: Path) -> None:
    # -I: no site-packages and no PYTHONPATH, as on a server.
    for kind in zipapps.KINDS:
        path = tmp_path / zipapps.FILE_NAMES[kind]
        assert zipapps.main(["zipapps", kind, str(path)]) == 0
        out = subprocess.run([sys.executable, "-I", str(path), "--help"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "usage:" in out.stdout, (kind, out.stderr)
