"""The pinned release a server downloads itself (when it does not get a local build uploaded)."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from jiji_common.digest import sha256_file

from .errors import StepError


def download(url: str, dest: Path, sha256: str, timeout: float = 60) -> bool:
    """DEST with SHA-256 `sha256`, fetched from URL unless it is already there; True when fetched.

    A file at DEST with other content (an interrupted fetch, a changed pin) is fetched again. A
    fetch that does not match the pin is deleted before the error, so the next run starts clean
    instead of failing on a kept bad file for good."""
    if dest.is_file() and sha256_file(dest) == sha256:
        return False
    dest.unlink(missing_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
    except (OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        raise StepError(
            f"downloading {url} failed: {e}; check the URL and that this server reaches it, then run pulumi up again"
        ) from e
    got = sha256_file(part)
    if got != sha256:
        part.unlink()
        raise StepError(
            f"{url} has SHA-256 {got}, not the pinned {sha256} (nothing was installed; the file is deleted): "
            "the release at that URL changed or the pin is wrong; fix corrosion_url or corrosion_sha256, then run pulumi up again"
        )
    os.replace(part, dest)
    return True
