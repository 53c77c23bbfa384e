"""The provider's pure rules (command_provider/rules.py): what Check refuses and fills in, what a
change of inputs means. The same rules run through the real engine in test_command_provider.py."""

from __future__ import annotations

from typing import Any

from command_provider import rules, wire

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBpK2m7ZbJ0sN0oV2vQ6Yq0Kk3xq7wq6c0h0J3y4wJm1"


def command(**changes: Any) -> dict[str, Any]:
    connection = {"host": "198.18.0.10", "privateKey": wire.secret(KEY), "hostKey": HOST_KEY}
    return {"connection": connection, "create": "sh -s -- apply", "delete": "sh -s -- remove", "stdin": "x", **changes}


def test_check_fills_in_the_connection_defaults_and_keeps_secrets_secret() -> None:
    inputs, failures = rules.check(rules.COMMAND, command())
    assert failures == []
    assert wire.is_secret(inputs["connection"])  # as a whole: it holds the private key
    conn = inputs["connection"]["value"]
    assert conn["user"] == "root" and conn["port"] == 22 and conn["dialErrorLimit"] == 10 and conn["perDialTimeout"] == 15
    assert conn["privateKey"] == wire.secret(KEY)  # still a secret of its own, as the program sent it


def test_check_refuses_what_it_does_not_support_with_a_sentence() -> None:
    news = command(environment={"A": "1"})
    news["connection"] = {**news["connection"], "proxy": {"host": "bastion"}, "password": "pw"}
    _, failures = rules.check(rules.COMMAND, news)
    by_property = dict(failures)
    assert "not supported" in by_property["connection.proxy"]
    assert "not supported" in by_property["connection.password"]
    assert "AcceptEnv" in by_property["environment"]
    _, failures = rules.check(rules.COMMAND, command(bogus=1))
    assert dict(failures)["bogus"] == "bogus is not an input of command:remote:Command"


def test_check_refuses_a_malformed_host_key_and_a_missing_key() -> None:
    news = command()
    news["connection"] = {"host": "h", "hostKey": "ssh-ed25519"}
    _, failures = rules.check(rules.COMMAND, news)
    props = [p for p, _ in failures]
    assert props == ["connection.privateKey", "connection.hostKey"]


def test_only_triggers_replace_and_secrets_compare_by_value() -> None:
    old = rules.outputs_after_run(rules.check(rules.COMMAND, command(triggers=[1]))[0], "out\n", "")
    assert old["stdout"] == "out" and wire.is_secret(old["connection"])
    same, _ = rules.check(rules.COMMAND, command(triggers=[1]))
    assert rules.diff(rules.COMMAND, old, same, []) == ({}, [])
    stdin, _ = rules.check(rules.COMMAND, command(triggers=[1], stdin="y"))
    assert rules.diff(rules.COMMAND, old, stdin, []) == ({"stdin": "update"}, [])
    triggered, _ = rules.check(rules.COMMAND, command(triggers=[2]))
    assert rules.diff(rules.COMMAND, old, triggered, []) == ({"triggers": "update"}, ["triggers"])
    added, _ = rules.check(rules.COMMAND, command(triggers=[1], update="sh -s -- apply"))
    assert rules.diff(rules.COMMAND, old, added, []) == ({"update": "add"}, [])


def test_an_unknown_input_is_a_change_and_ignore_changes_is_honoured() -> None:
    old = rules.outputs_after_run(command(), "", "")
    assert rules.diff(rules.COMMAND, old, command(stdin=wire.UNKNOWN), [])[0] == {"stdin": "update"}
    assert rules.diff(rules.COMMAND, old, command(stdin="other"), ["stdin"])[0] == {}
    assert rules.diff(rules.COMMAND, old, command(stdin="other"), ["*"])[0] == {}


def test_an_asset_is_compared_by_its_content_hash() -> None:
    asset = {wire.SIG: wire.ASSET_SIG, "path": "/a/b", "hash": "h1"}
    old = rules.copy_outputs({"connection": command()["connection"], "source": asset, "remotePath": "/x"})
    moved = {**asset, "path": "/c/d"}
    assert rules.diff(rules.COPY, old, {**old, "source": moved}, [])[0] == {}
    assert not rules.needs_copy(old, {**old, "source": moved})
    changed = {**asset, "hash": "h2"}
    assert rules.diff(rules.COPY, old, {**old, "source": changed}, [])[0] == {"source": "update"}
    assert rules.needs_copy(old, {**old, "source": changed})
    assert rules.needs_copy(old, {**old, "remotePath": "/y"})


def test_a_resource_is_known_by_its_own_type_under_any_parent() -> None:
    urn = "urn:pulumi:lab::jiji-net::jiji:network:Mesh$jiji:network:Server$command:remote:Command::lab0-host"
    assert rules.type_of(urn) == rules.COMMAND and rules.name_of(urn) == "lab0-host"
    assert rules.type_of("urn:pulumi:t::p::command:remote:CopyToRemote::f") == rules.COPY
