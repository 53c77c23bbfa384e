"""A daemon's counters in a JSON file that the host exporter (`jiji-net metrics`) reads: the
daemons without an endpoint of their own (registrar, rejoin watch, jiji-jit) publish this way.

The file lives in tmpfs (layout.COUNTERS_DIR), is replaced whole at most once per FLUSH s and only
when something changed, and starts from zero with the process, as Prometheus counters may."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from .files import replace_file

FLUSH = 1.0


class CounterFile:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._counts: dict[str, int | dict[str, int]] = {}
        self._lock = threading.Lock()
        self._dirty = threading.Event()

    def add(self, name: str, label: str | None = None, n: int = 1) -> None:
        """`name` up by n; with `label`, one series of a labelled family (a reason, a kind)."""
        with self._lock:
            if label is None:
                current = self._counts.get(name, 0)
                self._counts[name] = (current if isinstance(current, int) else 0) + n
            else:
                family = self._counts.setdefault(name, {})
                if isinstance(family, dict):
                    family[label] = family.get(label, 0) + n
        self._dirty.set()

    def flush(self) -> None:
        with self._lock:
            text = json.dumps(self._counts, sort_keys=True)
            self._dirty.clear()
        try:
            replace_file(self.path, text + "\n")
        except OSError:
            pass  # metrics only: a full or read-only /run must not stop the daemon

    def start(self) -> CounterFile:
        """Writes the file now (zeros), then on changes, from a daemon thread."""
        self.flush()

        def loop() -> None:
            while True:
                self._dirty.wait()
                self.flush()
                threading.Event().wait(FLUSH)

        threading.Thread(target=loop, name="counters", daemon=True).start()
        return self


def read(path: str | Path) -> dict[str, int | dict[str, int]] | None:
    """The counters a daemon last wrote; None when it has written none (not running here)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
