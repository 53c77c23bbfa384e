"""`jiji-net prometheus targets`: the file_sd document from a stack's outputs, the error when the
stack has no metrics, the file replaced whole, and promtool accepting the example configuration
with a generated document."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from jiji_ops import promtargets, remote

from tests.test_alert_rules import TARGETS_FILE, monitoring_copy, promtool


def server(index: int, mesh_address: str) -> dict[str, Any]:
    return {
        "index": index,
        "subnet": f"10.210.{index}.0/24",
        "mesh_address": mesh_address,
        "dns_address": mesh_address,
        "public_key": f"key{index}=",
        "endpoint": f"198.18.0.{10 + index}:51820",
        "ssh": {"host": f"198.18.0.{10 + index}", "port": 22, "user": "root", "host_key": None},
    }


def outputs(metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    # Servers out of index order: the document follows the index, not the dict.
    return {
        "cluster_cidr": "10.210.0.0/16",
        "domain": "jiji",
        "servers": {"lab1": server(1, "10.210.1.1"), "lab0": server(0, "10.210.0.1")},
        "access": None,
        "metrics": metrics,
    }


METRICS = {"host_port": 9480, "dns_port": 9481}
EXPECTED = [
    {"targets": ["10.210.0.1:9480"], "labels": {"job": "jiji-net", "server": "lab0"}},
    {"targets": ["10.210.0.1:9481"], "labels": {"job": "jiji-dns", "server": "lab0"}},
    {"targets": ["10.210.1.1:9480"], "labels": {"job": "jiji-net", "server": "lab1"}},
    {"targets": ["10.210.1.1:9481"], "labels": {"job": "jiji-dns", "server": "lab1"}},
]


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line as cli.py builds it: remote's options first, then the subcommand."""
    p = argparse.ArgumentParser(prog="jiji-net")
    p.add_argument("--json", action="store_true")
    remote.add_arguments(p)
    sub = p.add_subparsers(dest="command", required=True)
    promtargets.add_arguments(sub.add_parser("prometheus"))
    return p.parse_args(argv)


def test_each_server_has_a_group_per_job_at_its_mesh_address() -> None:
    assert promtargets.targets(outputs(METRICS)) == EXPECTED
    # The stack's `mesh` output (what another stack reads) gives the same document.
    assert promtargets.targets({"mesh": outputs(METRICS)}) == EXPECTED
    six = outputs(METRICS)
    six["servers"] = {"v6": server(0, "fd00:210::1")}
    assert promtargets.targets(six)[0]["targets"] == ["[fd00:210::1]:9480"]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (outputs(None), "no metrics endpoints ('metrics' is missing or null): metrics are off in this stack"),
        ({k: v for k, v in outputs(None).items() if k != "metrics"}, "metrics are off in this stack"),
        (outputs({"host_port": 9480, "dns_port": "9481"}), "metrics.dns_port = '9481', not a port"),
        (outputs({"dns_port": 9481}), "metrics.host_port = None, not a port"),
        ({**outputs(METRICS), "servers": {}}, "list no servers"),
    ],
    ids=["metrics-off", "no-metrics-key", "port-a-string", "port-missing", "no-servers"],
)
def test_outputs_without_usable_metrics_are_refused_with_the_fix(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        promtargets.targets(document)


def test_the_command_prints_the_document_or_says_why_not(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stack = tmp_path / "outputs.json"
    stack.write_text(json.dumps(outputs(METRICS)))
    assert promtargets.run(parse(["--outputs", str(stack), "prometheus", "targets"])) == 0
    assert json.loads(capsys.readouterr().out) == EXPECTED
    stack.write_text(json.dumps(outputs(None)))
    assert promtargets.run(parse(["--outputs", str(stack), "prometheus", "targets"])) == 1
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err.startswith("jiji-net prometheus targets: the stack's outputs have no metrics endpoints")


def test_output_replaces_the_file_whole(tmp_path: Path) -> None:
    stack = tmp_path / "outputs.json"
    stack.write_text(json.dumps(outputs(METRICS)))
    target = tmp_path / "prometheus" / TARGETS_FILE
    target.parent.mkdir()
    target.write_text("[]\n")
    # A reader that opened the old file keeps reading the old file: the new one is renamed over it,
    # never truncated and written in place.
    with open(target) as reader:
        args = parse(["--outputs", str(stack), "prometheus", "targets", "--output", str(target)])
        assert args.output == str(target) and args.outputs == str(stack)
        assert promtargets.run(args) == 0
        assert reader.read() == "[]\n"
        assert os.fstat(reader.fileno()).st_ino != target.stat().st_ino
    assert json.loads(target.read_text()) == EXPECTED
    assert sorted(p.name for p in target.parent.iterdir()) == [TARGETS_FILE]


def test_promtool_accepts_the_example_configuration_with_a_generated_file(tmp_path: Path) -> None:
    copy = monitoring_copy(tmp_path)
    (copy / TARGETS_FILE).write_text(promtargets.render(promtargets.targets(outputs(METRICS))))
    ok = promtool("check", "config", "prometheus.yml", cwd=copy)
    assert ok.returncode == 0 and "WARNING" not in ok.stdout + ok.stderr, ok.stdout + ok.stderr
    # The check reads the document: a label name Prometheus refuses fails it.
    bad = [{"targets": ["10.210.0.1:9480"], "labels": {"job": "jiji-net", "server-name": "lab0"}}]
    (copy / TARGETS_FILE).write_text(json.dumps(bad))
    failed = promtool("check", "config", "prometheus.yml", cwd=copy)
    assert failed.returncode != 0 and "server-name" in failed.stdout + failed.stderr
