"""Prometheus's text exposition format (version 0.0.4): what both exporters write, jiji-dns's
and the host tool's. Families are written whole (HELP, TYPE, samples), label values escaped."""

from __future__ import annotations

from typing import Any


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, object]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}"


class Exposition:
    """Builds one scrape's text: a HELP and TYPE line per family, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: list[tuple[dict[str, object], float]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def one(self, name: str, kind: str, help_text: str, value: float, **labels: object) -> None:
        self.family(name, kind, help_text, [(labels, value)])

    def histogram(
        self,
        name: str,
        help_text: str,
        bounds: tuple[float, ...],
        series: list[tuple[dict[str, object], dict[str, Any]]],
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} histogram")
        for labels, h in series:
            running = 0
            for bound, count in zip((*bounds, float("inf")), h["counts"], strict=False):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                self.lines.append(f"{name}_bucket{_labels({**labels, 'le': le})} {running}")
            self.lines.append(f"{name}_sum{_labels(labels)} {_number(h['sum'])}")
            self.lines.append(f"{name}_count{_labels(labels)} {running}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))
