"""The SDK's per-resource debug RPCs are dropped, and nothing else of its logging."""

from __future__ import annotations

import types

import pulumi
import pytest
from pulumi.runtime import resource as registration

from components import sdk_tuning


@pytest.fixture
def fresh_registration_log(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever an earlier test (or the program under mocks) did, start from the SDK's own module.
    monkeypatch.setattr(registration, "log", pulumi.log)


def test_registration_debug_is_dropped_and_the_rest_passes(fresh_registration_log: None, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, str]] = []
    for level in ("debug", "info", "warn", "error"):
        monkeypatch.setattr(pulumi.log, level, lambda msg, *a, level=level, **k: sent.append((level, msg)))
    assert sdk_tuning.quiet_registration_debug({}) is True
    registration.log.debug("registering resource: ty=command:remote:Command, name=s0-host, custom=True, remote=False")
    registration.log.debug("resource registration prepared: ty=command:remote:Command, name=s0-host")
    registration.log.debug("resource registration successful: ty=command:remote:Command, urn=urn:pulumi:x")
    registration.log.debug("exception when preparing or executing rpc for ty='t' name='n': Traceback ...")
    registration.log.warn("a warning")
    registration.log.error("an error")
    pulumi.log.debug("registering resource: the program's own debug message")
    assert sent == [
        ("debug", "exception when preparing or executing rpc for ty='t' name='n': Traceback ..."),
        ("warn", "a warning"),
        ("error", "an error"),
        ("debug", "registering resource: the program's own debug message"),
    ]
    # Twice is the same as once: the view is not wrapped in another.
    assert sdk_tuning.quiet_registration_debug({}) is True
    assert registration.log._module is pulumi.log  # type: ignore[attr-defined]


def test_the_debug_messages_stay_when_asked_for(fresh_registration_log: None) -> None:
    assert sdk_tuning.quiet_registration_debug({sdk_tuning.ENV_KEEP: "1"}) is False
    assert registration.log is pulumi.log
    assert isinstance(registration.log, types.ModuleType)


def test_an_sdk_without_the_attribute_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(registration, "log")
    assert sdk_tuning.quiet_registration_debug({}) is False
    assert not hasattr(registration, "log")


def test_the_routine_messages_are_the_installed_sdks() -> None:
    # An SDK whose messages read otherwise would keep sending them all: this says so.
    import inspect

    source = inspect.getsource(registration)
    for prefix in sdk_tuning.ROUTINE:
        assert f'log.debug(f"{prefix}' in source or f'f"{prefix}' in source, prefix
