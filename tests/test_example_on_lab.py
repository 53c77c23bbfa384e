"""examples/mesh-beside-a-service deployed on two lab hosts the way the lab tests deploy the mesh
(the real engine, `python -m deploy --program`): its own resource sits beside the mesh and reads
the mesh's outputs, and `destroy` leaves the hosts as they were found."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import FIRST_PACKET_WAIT, Lab, module_lab
from tests.engines import make_engine
from tests.harness import REPO, corrosion_binary, wait_until
from tests.test_mesh_on_lab import REPLICATED, SNAPSHOT, assert_unchanged, config, ready

pytestmark = pytest.mark.corrosion

EXAMPLE = REPO / "examples" / "mesh-beside-a-service"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    corrosion_binary()
    yield from module_lab(2)


def test_the_example_deploys_beside_the_mesh_and_destroy_leaves_the_hosts_as_found(lab: Lab) -> None:
    found = {i: lab.run(i, SNAPSHOT) for i in range(2)}
    engine = make_engine("example", program=EXAMPLE)
    try:
        run = engine.up({**config(lab, 2), "jiji-net-example:motd": "built on the lab"})
        assert run.outputs["dns_servers"] == ["10.210.0.1", "10.210.1.1"]
        for i in range(2):
            # As the mesh test does: traffic starts the WireGuard handshake, then `ready` holds
            # once Corrosion sees its peer (seconds after the up; REPLICATED is the mesh's bound).
            assert lab.pings(i, f"10.210.{1 - i}.1", wait=FIRST_PACKET_WAIT), f"lab{i} cannot ping its neighbour over jiji0"
            wait_until(lambda i=i: "exit=0" in ready(lab, i), REPLICATED, f"lab{i} ready")
            note = json.loads(lab.run(i, "cat /etc/jiji-example/neighbours.json"))
            other = 1 - i
            assert note == {
                "motd": "built on the lab",
                "server": f"lab{i}",
                "mesh_address": f"10.210.{i}.1",
                "dns": f"10.210.{i}.1",
                "neighbours": {f"lab{other}": f"10.210.{other}.1"},
            }
            # What the note names works: the neighbour's jiji-dns answers over the mesh.
            assert "198.18.0.200" in lab.run(i, f"dig +short +time=1 +tries=2 @10.210.{other}.1 www.lab.test")
    finally:
        try:
            engine.destroy()
        finally:
            engine.close()
    for i in range(2):
        assert_unchanged(found[i], lab.run(i, SNAPSHOT), f"lab{i} after destroy")
