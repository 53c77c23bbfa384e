"""Builds the host zipapps, each one file that runs on any python3 >= 3.11:

- `dns`: jiji-dns.pyz, the daemon (jiji_dns, jiji_common, dnslib);
- `tool`: jiji-net.pyz, the host tool (jiji_ops, jiji_common);
- `step`: the step helper the step library runs (jiji_step, jiji_common).

The sources are the installed packages, found by import, so a checkout and an installed wheel
build the same bytes. Reproducible byte for byte (sorted entries, fixed timestamps and modes, no
bytecode): the program uses a zipapp's SHA-256 to decide when a server needs the new file.

    python -m jiji_net.zipapps dns|tool|step OUT.pyz
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import sys
import zipfile
from pathlib import Path

SHEBANG = b"#!/usr/bin/env python3\n"
# What both the daemon and the tool need is in jiji_common: a change to the daemon alone leaves
# the tool's bytes as they are, so servers restart jiji-dns and not the registrar or the rejoin
# watch. The step helper takes only the modules of jiji_common it imports: its hash is in every
# step (through the library's path), so any byte of it re-runs every step on every server.
KINDS: dict[str, tuple[tuple[str, ...], str]] = {
    "dns": (("jiji_dns", "jiji_common", "dnslib"), "jiji_dns.main"),
    "tool": (("jiji_ops", "jiji_common"), "jiji_ops.cli"),
    "step": (("jiji_step", "jiji_common/__init__.py", "jiji_common/layout.py", "jiji_common/digest.py", "jiji_common/files.py"), "jiji_step.cli"),
}
FILE_NAMES = {"dns": "jiji-dns.pyz", "tool": "jiji-net.pyz", "step": "jiji-step.pyz"}


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name} is not installed; pip install the jiji-net project")
    return Path(list(spec.submodule_search_locations)[0])


def _sources(kind: str) -> list[tuple[str, bytes]]:
    packages, entry = KINDS[kind]
    files = []
    for part in packages:
        package, _, module = part.partition("/")
        package_dir = _package_dir(package)
        for path in sorted([package_dir / module] if module else package_dir.rglob("*.py")):
            if "__pycache__" in path.parts or (package == "dnslib" and path.name.startswith("test")):
                continue
            files.append((f"{package}/{path.relative_to(package_dir).as_posix()}", path.read_bytes()))
    files.append(("__main__.py", f"import sys\n\nfrom {entry} import main\n\nsys.exit(main())\n".encode()))
    return sorted(files)


def build(kind: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in _sources(kind):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data, compresslevel=9)
    return SHEBANG + buffer.getvalue()


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in KINDS:
        print(f"usage: python -m jiji_net.zipapps {'|'.join(KINDS)} OUT.pyz", file=sys.stderr)
        return 2
    data = build(argv[1])
    out = Path(argv[2])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    out.chmod(0o755)
    print(f"{out} sha256={hashlib.sha256(data).hexdigest()} bytes={len(data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
