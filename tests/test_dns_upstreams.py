"""Where jiji-dns forwards when no --upstream is given: the host's resolv.conf, else (when it names
only systemd-resolved's stub) resolved's own list of real upstreams, else public resolvers with
a warning in the log."""

from __future__ import annotations

from pathlib import Path

import pytest
from jiji_dns import config, main

STUB = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"


def load(tmp_path: Path, resolv: str, resolved: str | None, monkeypatch: pytest.MonkeyPatch) -> config.Config:
    (tmp_path / "resolv.conf").write_text(resolv)
    resolved_path = tmp_path / "resolved.conf"
    if resolved is not None:
        resolved_path.write_text(resolved)
    monkeypatch.setattr(config, "RESOLVED_UPSTREAMS", str(resolved_path))
    return config.load(["--listen", "10.210.0.1:53", "--resolv-conf", str(tmp_path / "resolv.conf")])


def test_plain_resolv_conf_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load(tmp_path, "nameserver 198.18.0.2\nnameserver 10.210.0.1\n", "nameserver 192.0.2.9\n", monkeypatch)
    # Our own listen address is never an upstream (it would loop).
    assert [str(u) for u in cfg.upstreams] == ["198.18.0.2:53"]
    assert cfg.upstreams_from == str(tmp_path / "resolv.conf")


def test_behind_systemd_resolveds_stub_its_real_upstreams_are_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load(tmp_path, STUB, "nameserver 192.0.2.9\nnameserver 2001:db8::53\n", monkeypatch)
    assert [str(u) for u in cfg.upstreams] == ["192.0.2.9:53", "[2001:db8::53]:53"]
    assert cfg.upstreams_from == str(tmp_path / "resolved.conf")


def test_the_public_fallback_is_logged_as_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load(tmp_path, STUB, None, monkeypatch)
    assert [u.host for u in cfg.upstreams] == list(config.FALLBACK_UPSTREAMS)
    assert cfg.upstreams_from == "fallback"
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    main.warn_about_upstreams(cfg)
    line = capsys.readouterr().out
    assert line.startswith("<4>event=upstreams_fallback ") and "--upstream" in line
