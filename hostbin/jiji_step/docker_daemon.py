"""The `dns` key of dockerd's daemon.json: set to the mesh's DNS address with every other key kept,
and put back exactly as found when the mesh leaves (the file as found is saved once)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jiji_common.files import replace_file

from .errors import StepError


def set_dns(path: Path, saved: Path, address: str) -> bool:
    """`dns` in PATH set to [ADDRESS]; True when the file changed (dockerd reads it only when it
    starts). The file as found (or its absence) is saved in SAVED the first time."""
    try:
        text: str | None = path.read_text()
    except FileNotFoundError:
        text = None
    try:
        # An empty file is how some installs leave it; dockerd reads it as no settings, so do we.
        config: Any = json.loads(text) if text is not None and text.strip() else {}
    except ValueError as e:
        raise StepError(f"{path} is not valid JSON ({e}); fix it, then run pulumi up again") from e
    if not isinstance(config, dict):
        raise StepError(
            f"{path} holds {type(config).__name__}, not a JSON object of settings; fix it, then run pulumi up again"
        )
    if not saved.exists():
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({"existed": text is not None, "text": text}))
    if config.get("dns") == [address]:
        return False
    config["dns"] = [address]
    replace_file(path, json.dumps(config, indent=2) + "\n")
    return True


def restore(path: Path, saved: Path) -> str:
    """PATH put back as SAVED says it was found; SAVED is removed. Returns "" (nothing to do),
    "changed", or "changed-empty" (put back as an empty file, which dockerd refuses to start
    with, moby#41268: the caller does not restart it)."""
    try:
        before = json.loads(saved.read_text())
    except FileNotFoundError:
        return ""
    except ValueError as e:
        raise StepError(
            f"{saved} is not the JSON this step wrote ({e}); put {path} back by hand, then delete {saved}"
        ) from e
    result = ""
    if not before["existed"]:
        if path.exists():
            path.unlink()
        result = "changed"
    else:
        now = path.read_text() if path.exists() else None
        if now != before["text"]:
            replace_file(path, before["text"])
            result = "changed" if before["text"].strip() else "changed-empty"
    saved.unlink()
    return result
