"""`make lint`: shellcheck on every script the program renders, for every engine and both ways
of getting Corrosion, so an unquoted expansion fails the build (run: python -m tests.shellcheck)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from jiji_net import render, steps
from jiji_net.model import CorrosionSource, MeshSettings, Server
from jiji_net.plan import plan_addresses

LIB = "f" * 64
HOSTILE_ROWS = '{"servers": [{"id": "it\'s $(not) `run`"}]}\n'


def rendered() -> dict[str, str]:
    # The library the steps source; shellcheck sees it on its own (it uses the steps' STEP, OWNER, STAMP).
    scripts: dict[str, str] = {"steplib.sh": render.step_library(steps.helper_path("e" * 64), "e" * 64)}
    for engine in ("none", "docker", "podman"):
        for url in ("", "https://example.invalid/corrosion.tar.gz"):
            corrosion = CorrosionSource(url=url, sha256="a" * 64) if url else CorrosionSource(local_path="/x")
            settings = MeshSettings(container_engine=engine, corrosion=corrosion)
            servers = [
                Server(name=f"s{i}", host=f"198.18.0.{10 + i}", index=i, endpoint=f"198.18.0.{10 + i}",
                       private_address=f"10.0.0.{5 + i}/24")
                for i in range(3)
            ]  # fmt: skip
            plans = plan_addresses(settings, servers)
            plan = plans["s1"]
            tag = f"{engine}-{'download' if url else 'upload'}"
            for step in (
                steps.host_step("s1-host", engine),
                steps.network_step("s1-network", LIB, settings, plan),
                steps.wireguard_step("s1-wireguard", LIB, settings, plan, servers[1], "b" * 64),
                steps.corrosion_step("s1-corrosion", LIB, settings, plan, [plans["s0"]], "c" * 64),
                steps.dns_step("s1-dns", LIB, settings, plan, "d" * 64, "e" * 64),
                steps.registry_step("registry", LIB, HOSTILE_ROWS),
            ):
                scripts[f"{tag}/{step.kind}.sh"] = step.script
                # The commands the provider runs go through the login shell too.
                scripts[f"{tag}/{step.kind}.create.sh"] = step.create + "\n"
            scripts[f"{tag}/network.sh"] = render.network_script(settings, plan, render.BRIDGE)
    return scripts


def main() -> int:
    if shutil.which("shellcheck") is None:
        print("shellcheck is missing: run lab/toolchain.sh packages (Debian package shellcheck)", file=sys.stderr)
        return 2
    failed = 0
    with tempfile.TemporaryDirectory(prefix="jiji-shellcheck-") as tmp:
        for name, text in rendered().items():
            path = Path(tmp) / name.replace("/", "--")
            path.write_text(text)
            result = subprocess.run(
                ["shellcheck", "--shell=sh", "--severity=style", str(path)], capture_output=True, text=True
            )
            if result.returncode != 0:
                failed += 1
                print(f"== {name}\n{result.stdout}")
    print(f"shellcheck: {len(rendered())} rendered scripts, {failed} with findings")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
