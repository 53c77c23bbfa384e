"""Builds the host zipapps: jiji-dns.pyz (the daemon and dnslib) and jiji-net.pyz (the host tool),
each one file that runs on any python3 >= 3.11.

Reproducible byte for byte (sorted entries, fixed timestamps and modes, no bytecode), so the
program can use its SHA-256 to decide when a server needs the new file.

    python hostbin/build_zipapp.py OUT.pyz          # jiji-dns
    python hostbin/build_zipapp.py --tool OUT.pyz   # jiji-net host tool
"""

from __future__ import annotations

import hashlib
import io
import sys
import zipfile
from pathlib import Path

import dnslib  # type: ignore[import-untyped]

HERE = Path(__file__).resolve().parent
SHEBANG = b"#!/usr/bin/env python3\n"
DNS_MAIN = b"import sys\n\nfrom jiji_dns.main import main\n\nsys.exit(main())\n"
TOOL_MAIN = b"import sys\n\nfrom jiji_ops.cli import main\n\nsys.exit(main())\n"


def _sources(tool: bool) -> list[tuple[str, bytes]]:
    files = []
    # What both need is in jiji_common: a change to the daemon alone leaves the tool's bytes as
    # they are, so servers restart jiji-dns and not the registrar or the rejoin watch.
    common = (HERE / "jiji_common", "jiji_common")
    packages = [(HERE / "jiji_ops", "jiji_ops"), common] if tool else [(HERE / "jiji_dns", "jiji_dns"), common, (Path(dnslib.__file__).parent, "dnslib")]
    for package_dir, prefix in packages:
        for path in sorted(package_dir.rglob("*.py")):
            if "__pycache__" in path.parts or (prefix == "dnslib" and path.name.startswith("test")):
                continue
            files.append((f"{prefix}/{path.relative_to(package_dir).as_posix()}", path.read_bytes()))
    files.append(("__main__.py", TOOL_MAIN if tool else DNS_MAIN))
    return sorted(files)


def build(tool: bool = False) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in _sources(tool):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data, compresslevel=9)
    return SHEBANG + buffer.getvalue()


def main(argv: list[str]) -> int:
    tool = "--tool" in argv[1:]
    rest = [a for a in argv[1:] if a != "--tool"]
    if len(rest) != 1:
        print("usage: build_zipapp.py [--tool] OUT.pyz", file=sys.stderr)
        return 2
    data = build(tool)
    out = Path(rest[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    out.chmod(0o755)
    print(f"{out} sha256={hashlib.sha256(data).hexdigest()} bytes={len(data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
