"""A real Prometheus (Debian's, the test machine's binary) in a lab host's network namespace, so
it scrapes every server over that host's jiji0 as a Prometheus on a mesh server would: targets
from `jiji-net prometheus targets`, rules from monitoring/alerts.yml. Its storage and config are a
temporary directory; close() stops it by its own pid."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from tests.harness import REPO

# Fast enough for a test, and the same for both: a rule sees a scrape at most INTERVAL s old.
INTERVAL = 2
PORT = 9090


def targets_file(tool: Path, outputs: dict[str, Any], where: Path) -> Path:
    """`jiji-net prometheus targets` run on the stack's outputs, as an operator would."""
    (where / "outputs.json").write_text(json.dumps(outputs))
    out = where / "jiji-targets.json"
    subprocess.run(
        [sys.executable, str(tool), "--outputs", str(where / "outputs.json"), "prometheus", "targets", "--output", str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


class LabPrometheus:
    def __init__(self, host_index: int, targets: Path, where: Path) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: run `bash lab/toolchain.sh packages` (Debian's prometheus package)"
        self.netns = f"jiji-lab-h{host_index}"
        shutil.copy(REPO / "monitoring" / "alerts.yml", where / "alerts.yml")
        (where / "prometheus.yml").write_text(
            f"global:\n  scrape_interval: {INTERVAL}s\n  evaluation_interval: {INTERVAL}s\n"
            "rule_files:\n  - alerts.yml\n"
            "scrape_configs:\n  - job_name: jiji\n    file_sd_configs:\n"
            f"      - files:\n          - {targets}\n"
        )
        self.log = open(where / "prometheus.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, binary, f"--config.file={where / 'prometheus.yml'}",
             f"--storage.tsdb.path={where / 'data'}", f"--web.listen-address=127.0.0.1:{PORT}"],
            stdout=self.log, stderr=self.log,
        )  # fmt: skip

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{PORT}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        out = subprocess.run(
            ["ip", "netns", "exec", self.netns, "curl", "-sf", "--max-time", "5", url], capture_output=True, timeout=30
        )
        if out.returncode != 0:
            return None
        return json.loads(out.stdout)["data"]

    def targets_up(self) -> dict[str, str]:
        """instance -> health of every active target."""
        data = self.api("targets")
        return {t["labels"]["instance"]: t["health"] for t in data["activeTargets"]} if data else {}

    def value(self, query: str) -> float | None:
        """An instant query's single value, or None when it has no result."""
        data = self.api("query", query=query)
        if not data or not data["result"]:
            return None
        return float(data["result"][0]["value"][1])

    def firing(self, alert: str) -> list[dict[str, str]]:
        data = self.api("alerts")
        return [a["labels"] for a in (data or {}).get("alerts", []) if a["labels"]["alertname"] == alert and a["state"] == "firing"]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()
