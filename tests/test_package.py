"""`pip install` of the project gives another Pulumi program the mesh component: the wheel holds
the templates and every host package, and builds the same zipapps as this checkout does."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from jiji_net import render, steps, zipapps
from tests.harness import REPO

PROBE = """
import hashlib, importlib.util, json, sys
from jiji_net import artifacts, render, steps, zipapps
from jiji_net.mesh import Mesh, MeshArgs
built = artifacts.built_zipapps()
ours = {p.split("/")[0] for packages, _ in zipapps.KINDS.values() for p in packages if p != "dnslib"} | {"jiji_net"}
print(json.dumps({
    "from": {p: importlib.util.find_spec(p).origin for p in sorted(ours)},
    "build_dir": str(artifacts.BUILD_DIR),
    "sha256": {kind: a.sha256 for kind, a in built.items()},
    "steplib": hashlib.sha256(render.step_library(steps.helper_path(built["step"].sha256), built["step"].sha256).encode()).hexdigest(),
}))
"""


def test_an_installed_wheel_builds_what_the_checkout_builds(tmp_path: Path) -> None:
    wheels, target, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "source"
    # From a copy of what the wheel is made of: setuptools keeps a build/lib of its own in the
    # source tree, and a stale one there would hide a package missing from pyproject.toml.
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("jiji_net", "hostbin"):
        shutil.copytree(REPO / part, source / part, ignore=skip)
    shutil.copy(REPO / "pyproject.toml", source)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        check=True,
        timeout=300,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("jiji_net-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(target), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    # Each of our packages from the wheel (this interpreter's editable install is on its path too).
    assert len(got["from"]) == 5 and all(path.startswith(str(target)) for path in got["from"].values()), got["from"]
    assert got["build_dir"] == str(tmp_path / "cache" / "jiji-net" / "build")
    assert got["sha256"] == {kind: hashlib.sha256(zipapps.build(kind)).hexdigest() for kind in zipapps.KINDS}
    helper = steps.helper_path(got["sha256"]["step"])
    assert got["steplib"] == hashlib.sha256(render.step_library(helper, got["sha256"]["step"]).encode()).hexdigest()
