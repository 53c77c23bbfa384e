"""Runs the container engine's CLI for the registrar: the full list, inspect, and the event stream.

The engine is asked through its CLI, not its socket: the same commands work for docker and
podman, need nothing beyond the standard library, and are what an operator would type.
"""

from __future__ import annotations

import collections
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from jiji_common import layout

from . import engine
from .engine import Container, Malformed


class EngineUnavailable(RuntimeError):
    """The engine did not answer (not installed, daemon down, timed out)."""


@dataclass
class Looked:
    """The outcome of inspecting some containers."""

    found: dict[str, Container] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    # Inspect output that could not be read: logged, and the rows of these ids left as they are.
    malformed: dict[str, str] = field(default_factory=dict)


# Enough ids per inspect to keep reconciling a busy server to a few calls, short enough for argv.
_BATCH = 100


class EngineCLI:
    def __init__(self, name: str, timeout: float = 30) -> None:
        self.name = name
        self.timeout = timeout

    def _run(self, argv: list[str]) -> tuple[int, str, str]:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout)
        except FileNotFoundError:
            raise EngineUnavailable(f"{argv[0]}: not installed (container_engine in {layout.HOST_CONFIG})") from None
        except subprocess.TimeoutExpired:
            raise EngineUnavailable(f"`{' '.join(argv[:3])}`: no answer in {self.timeout:.0f} s") from None
        return out.returncode, out.stdout, out.stderr

    def labelled_ids(self) -> list[str]:
        code, out, err = self._run(engine.ps_argv(self.name))
        if code != 0:
            raise EngineUnavailable(f"`{self.name} ps` failed ({code}): {err.strip()[:300]}")
        return [line.strip() for line in out.splitlines() if line.strip()]

    def inspect(self, ids: list[str]) -> Looked:
        result = Looked()
        for start in range(0, len(ids), _BATCH):
            self._inspect_batch(ids[start : start + _BATCH], result)
        return result

    def _inspect_batch(self, ids: list[str], result: Looked) -> None:
        code, out, err = self._run(engine.inspect_argv(self.name, ids))
        try:
            inspected = engine.read_inspect(code, out, err)
        except Malformed as e:
            if code != 0:
                raise EngineUnavailable(f"`{self.name} container inspect` failed ({code}): {err.strip()[:300]}") from None
            result.malformed.update({cid: str(e) for cid in ids})
            return
        seen = set()
        for element in inspected.elements:
            try:
                c = engine.parse_container(element)
            except Malformed as e:
                cid = element.get("Id") if isinstance(element, dict) else None
                if isinstance(cid, str) and cid in ids:
                    result.malformed[cid] = str(e)
                    seen.add(cid)
                continue
            if c.id in ids:
                result.found[c.id] = c
                seen.add(c.id)
        missing = [cid for cid in ids if cid not in seen]
        if not missing:
            return
        if not inspected.only_missing:
            raise EngineUnavailable(f"`{self.name} container inspect` failed ({code}): {inspected.error[:300]}")
        if len(ids) > 1 and code != 0:
            # Which of several ids is unknown is not reliably in the error text: ask each alone.
            for cid in missing:
                self._inspect_batch([cid], result)
            return
        result.gone.update(missing)


class EventStream:
    """One run of `ENGINE events`: each line goes to `on_line`; the last stderr lines are kept
    (bounded) to say why the stream ended."""

    def __init__(self, name: str, on_line: Callable[[str], None], max_line: int = 65536) -> None:
        self.argv = engine.events_argv(name)
        self.on_line = on_line
        self.max_line = max_line
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=5)
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Raises OSError if the engine's CLI cannot be started."""
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace"
        )

    def follow(self) -> int:
        """Hands on lines until the process ends; its exit code."""
        assert self.proc is not None and self.proc.stdout is not None and self.proc.stderr is not None
        stderr = self.proc.stderr
        reader = threading.Thread(target=lambda: self.stderr_tail.extend(line.strip()[:300] for line in stderr), daemon=True)
        reader.start()
        stdout = self.proc.stdout
        while line := stdout.readline(self.max_line):
            if not line.endswith("\n") and len(line) >= self.max_line:
                # An overlong line is read in pieces; hand on one marker, drop the rest of it.
                self.on_line(line[:200])
                while (rest := stdout.readline(self.max_line)) and not rest.endswith("\n"):
                    pass
                continue
            self.on_line(line)
        code = self.proc.wait()
        reader.join(2)
        return code

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
