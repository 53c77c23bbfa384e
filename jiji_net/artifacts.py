"""Files the program uploads, built or hashed locally at evaluation time (no Pulumi imports).

The zipapps are reproducible, so their SHA-256 changes only when their sources do, and a server
gets a new copy only then.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from jiji_common.digest import sha256_file

from . import zipapps
from .validation import ConfigError


def _build_dir() -> Path:
    """Where built files go: build/ of the checkout the package runs from (an editable install),
    else, for an installed wheel, the user's cache directory."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "hostbin" / "jiji_common").is_dir():
        return checkout / "build"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jiji-net" / "build"


BUILD_DIR = _build_dir()


@dataclass(frozen=True)
class Artifact:
    path: str
    sha256: str


def built_zipapps() -> dict[str, Artifact]:
    """Each of zipapps.KINDS built, written to the build directory only when its bytes changed."""
    out = {}
    for kind in zipapps.KINDS:
        data = zipapps.build(kind)
        path = BUILD_DIR / zipapps.FILE_NAMES[kind]
        if not path.exists() or path.read_bytes() != data:
            BUILD_DIR.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        out[kind] = Artifact(str(path), hashlib.sha256(data).hexdigest())
    return out


def local_binary(path: str) -> Artifact:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            [f"corrosion_local_path: {path} is not a file; build it (lab/toolchain.sh corrosion) or fix the path"]
        )
    return Artifact(str(p.resolve()), sha256_file(p))


def stack_file(project: str, stack: str, name: str, text: str) -> Artifact:
    """A file the program makes for one stack (build/stacks/<project>/<stack>/<name>: an installed
    package shares one build directory among its user's projects), rewritten only when its content
    changed; uploaded as a file asset, so state keeps its hash, not its bytes (a new path with the
    same hash is no change)."""
    return _written(BUILD_DIR / "stacks" / project / stack / name, text)


def built_file(name: str, text: str) -> Artifact:
    """A file the program makes the same for every stack (build/<name>), like `stack_file`."""
    return _written(BUILD_DIR / name, text)


def _written(path: Path, text: str) -> Artifact:
    data = text.encode()
    if not path.exists() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return Artifact(str(path), hashlib.sha256(data).hexdigest())


def staging_tree(dir_name: str, files: dict[str, Artifact]) -> Artifact:
    """Files that travel together in one upload: build/uploads/<hash>/<dir_name>/<file name>, the
    names the server's staging directory keeps them under. The tree is a directory archive, so
    state keeps one hash for all of them; its sha256 names the set. Trees unused for a day
    are pruned (the engine compares hashes; it never reads an old tree back); a newer one may be
    another evaluation's, running now."""
    names = dict(sorted(files.items()))
    digest = hashlib.sha256("".join(f"{n} {a.sha256}\n" for n, a in names.items()).encode()).hexdigest()
    root = BUILD_DIR / "uploads"
    tree = root / digest[:16] / dir_name
    if not tree.is_dir():
        partial = root / f".{digest[:16]}.{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        (partial / dir_name).mkdir(parents=True)
        for name, artifact in names.items():
            shutil.copyfile(artifact.path, partial / dir_name / name)
        try:
            partial.rename(tree.parent)
        except OSError:  # another evaluation made the same tree first
            shutil.rmtree(partial, ignore_errors=True)
    os.utime(tree.parent)
    stale = time.time() - 86400
    for old in root.iterdir():
        try:
            unused = old.stat().st_mtime < stale
        except FileNotFoundError:  # another evaluation pruned it first
            continue
        if unused and old.name != digest[:16] and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return Artifact(str(tree), digest)
