"""monitoring/ through promtool: the alert rules and the example configuration pass its checks,
the rules pass their unit tests (alerts_test.yml), and each check fails on a broken copy, so a
pass means something. promtool comes with Debian's prometheus package (lab/toolchain.sh)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import REPO

MONITORING = REPO / "monitoring"
# The targets file the example configuration reads, beside it.
TARGETS_FILE = "jiji-targets.json"


def promtool(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """promtool's result; a test fails, never skips, where it is missing."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: run `bash lab/toolchain.sh packages` (it installs Debian's prometheus)")
    return subprocess.run([exe, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)


def monitoring_copy(tmp_path: Path, rules: str | None = None) -> Path:
    """monitoring/ copied into tmp_path, with other rules if given, and an empty targets file."""
    for name in ("alerts.yml", "alerts_test.yml", "prometheus.yml"):
        shutil.copy(MONITORING / name, tmp_path / name)
    if rules is not None:
        (tmp_path / "alerts.yml").write_text(rules)
    (tmp_path / TARGETS_FILE).write_text("[]\n")
    return tmp_path


def rules_text() -> str:
    return (MONITORING / "alerts.yml").read_text()


def broken(old: str, new: str) -> str:
    text = rules_text()
    assert text.count(old) == 1, f"{old!r} is not once in alerts.yml: update this test with the rules"
    return text.replace(old, new)


def test_the_rules_pass_promtools_check_and_a_broken_expression_does_not(tmp_path: Path) -> None:
    ok = promtool("check", "rules", "monitoring/alerts.yml", cwd=REPO)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "SUCCESS: 7 rules found" in ok.stdout
    bad = monitoring_copy(tmp_path, broken("expr: jiji_corrosion_api_up == 0", "expr: jiji_corrosion_api_up =="))
    failed = promtool("check", "rules", "alerts.yml", cwd=bad)
    assert failed.returncode != 0 and "parse error" in failed.stdout + failed.stderr


def test_the_rules_pass_their_unit_tests() -> None:
    ran = promtool("test", "rules", "monitoring/alerts_test.yml", cwd=REPO)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "SUCCESS" in ran.stdout


def test_every_rule_is_tested_firing_and_quiet() -> None:
    rules = yaml.safe_load(rules_text())["groups"]
    assert [g["name"] for g in rules] == ["jiji-net"]
    names = {r["alert"] for r in rules[0]["rules"]}
    assert len(names) == 7
    for rule in rules[0]["rules"]:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
    cases: list[dict[str, Any]] = [
        case
        for test in yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    fires = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert fires == names and quiet == names


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # The stale threshold far above what the tests' dead peers reach.
        ('{kind="server"} > 180', '{kind="server"} > 3000'),
        # Access peers counted: the laptop that never shook hands would fire.
        ('{kind="server"} > 180', " > 180"),
        # Corrosion's API alerting at its first failed scrape: a 30 s blip would fire.
        ("expr: jiji_corrosion_api_up == 0\n        for: 1m\n", "expr: jiji_corrosion_api_up == 0\n"),
        # Drift measured by its largest kind: 2 files and 1 chain would say 2, not 3.
        ("sum by (job, instance, server) (jiji_drift_items)", "max by (job, instance, server) (jiji_drift_items)"),
        # Every job's down targets: the node exporter's would fire.
        ('up{job=~"jiji-net|jiji-dns"} == 0', "up == 0"),
    ],
    ids=["stale-3000", "access-peers", "api-no-for", "drift-max", "any-job"],
)
def test_the_unit_tests_fail_on_broken_rules(tmp_path: Path, old: str, new: str) -> None:
    control = promtool("test", "rules", "alerts_test.yml", cwd=monitoring_copy(tmp_path))
    assert control.returncode == 0, control.stdout + control.stderr
    failed = promtool("test", "rules", "alerts_test.yml", cwd=monitoring_copy(tmp_path, broken(old, new)))
    assert failed.returncode != 0 and "FAILED" in failed.stdout + failed.stderr


def test_the_example_configuration_passes_promtools_check(tmp_path: Path) -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert config["global"]["scrape_interval"] == "15s" and config["rule_files"] == ["alerts.yml"]
    assert config["scrape_configs"][0]["file_sd_configs"] == [{"files": [TARGETS_FILE]}]
    copy = monitoring_copy(tmp_path)
    ok = promtool("check", "config", "prometheus.yml", cwd=copy)
    assert ok.returncode == 0 and "WARNING" not in ok.stdout + ok.stderr, ok.stdout + ok.stderr
    # A targets file cut short fails the check: why `prometheus targets --output` replaces it whole.
    (copy / TARGETS_FILE).write_text('[{"targets": ["10.210.0.1:9480"]')
    cut = promtool("check", "config", "prometheus.yml", cwd=copy)
    assert cut.returncode != 0 and TARGETS_FILE in cut.stdout + cut.stderr
    (copy / TARGETS_FILE).write_text("[]\n")
    (copy / "alerts.yml").unlink()
    missing = promtool("check", "config", "prometheus.yml", cwd=copy)
    assert missing.returncode != 0 and "alerts.yml" in missing.stdout + missing.stderr
