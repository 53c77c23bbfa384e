"""Builds jiji-dns.pyz: the daemon and dnslib in one file that runs on any python3 >= 3.11.

Reproducible byte for byte (sorted entries, fixed timestamps and modes, no bytecode), so the
program can use its SHA-256 to decide when a server needs the new file.

    python hostbin/build_zipapp.py OUT.pyz
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
MAIN = b"import sys\n\nfrom jiji_dns.main import main\n\nsys.exit(main())\n"


def _sources() -> list[tuple[str, bytes]]:
    files = []
    for package_dir, prefix in ((HERE / "jiji_dns", "jiji_dns"), (Path(dnslib.__file__).parent, "dnslib")):
        for path in sorted(package_dir.rglob("*.py")):
            if "__pycache__" in path.parts or (prefix == "dnslib" and path.name.startswith("test")):
                continue
            files.append((f"{prefix}/{path.relative_to(package_dir).as_posix()}", path.read_bytes()))
    files.append(("__main__.py", MAIN))
    return sorted(files)


def build() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in _sources():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data, compresslevel=9)
    return SHEBANG + buffer.getvalue()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: build_zipapp.py OUT.pyz", file=sys.stderr)
        return 2
    data = build()
    out = Path(argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    out.chmod(0o755)
    print(f"{out} sha256={hashlib.sha256(data).hexdigest()} bytes={len(data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
