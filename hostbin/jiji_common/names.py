"""How a container becomes a DNS label, and which of a name's containers is the newest: the
daemon answers by these rules and the host tool explains its answers by the same ones."""

from __future__ import annotations

from typing import Any


def started_order(value: Any) -> tuple[int, float, str]:
    """Sort key for started_at: numbers (Unix ms) compare as numbers, text (ISO 8601) as text."""
    if isinstance(value, (int, float)):
        return (1, float(value), "")
    if value is None:
        return (0, 0.0, "")
    text = str(value)
    try:
        return (1, float(text), "")
    except ValueError:
        return (2, 0.0, text)


def label_for(*parts: str) -> str | None:
    """One DNS label joined from parts with '-', or None when it cannot be a label."""
    label = "-".join(parts).lower()
    if not label or len(label) > 63 or not label.isascii() or "." in label:
        return None
    return label
