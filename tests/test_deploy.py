"""deploy/toolchain.py: which provider a deployment uses, and that ours never lands in the user's
PULUMI_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deploy import toolchain


def test_without_the_official_plugin_ours_goes_into_the_checkout_not_the_users_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path / "user"))
    monkeypatch.delenv("JIJI_COMMAND_PROVIDER", raising=False)
    chosen = toolchain.choose_provider()
    assert chosen.home == toolchain.PROJECT_HOME
    assert "command_provider" in chosen.description
    assert toolchain.plugin_file(toolchain.PROJECT_HOME).read_text() == toolchain.launcher()
    assert not (tmp_path / "user").exists()


def test_the_official_plugin_is_used_where_installed_unless_ours_is_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    official = toolchain.plugin_file(tmp_path)
    official.parent.mkdir(parents=True)
    official.write_bytes(b"\x7fELF not ours")
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path))
    monkeypatch.delenv("JIJI_COMMAND_PROVIDER", raising=False)
    assert toolchain.choose_provider().home == tmp_path
    monkeypatch.setenv("JIJI_COMMAND_PROVIDER", "jiji")
    assert toolchain.choose_provider().home == toolchain.PROJECT_HOME
    official.write_text(toolchain.launcher())  # ours, installed there by hand: not the official one
    monkeypatch.setenv("JIJI_COMMAND_PROVIDER", "official")
    with pytest.raises(SystemExit, match="not the official plugin"):
        toolchain.choose_provider()


def test_a_stack_directory_gets_the_repositorys_project_with_its_config_beside_it(tmp_path: Path) -> None:
    where = toolchain.project_dir(tmp_path / "lab")
    project = yaml.safe_load((where / "Pulumi.yaml").read_text())
    original = yaml.safe_load((toolchain.REPO / "Pulumi.yaml").read_text())
    assert project["name"] == "jiji-net" and "stackConfigDir" not in project
    assert project["config"] == original["config"]  # the one schema of the settings
    assert toolchain.project_dir(toolchain.REPO) == toolchain.REPO
