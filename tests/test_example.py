"""examples/mesh-beside-a-service: another program with the mesh as a component, under mocks.
(The same program deploys on the lab through `python -m deploy --program`.)"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from tests.harness import REPO
from tests.program import evaluate
from tests.test_program import SECRET_KEY, binary, lab_config  # noqa: F401 - binary is a fixture

EXAMPLE = REPO / "examples" / "mesh-beside-a-service"


def test_the_example_puts_its_own_resource_beside_the_mesh_and_reads_its_outputs(binary: Path) -> None:  # noqa: F811
    run = evaluate(
        lab_config(binary),
        main_file=EXAMPLE / "__main__.py",
        project="jiji-net-example",
        own_config={"jiji-net-example:motd": "hello from the example"},
    )
    # The mesh is the same component the stack program makes: its resources keep their names.
    mesh = run.resources["jiji"]
    assert mesh.typ == "jiji:network:Mesh" and mesh.parent_type == "pulumi:pulumi:Stack"
    assert {f"lab{i}-dns" for i in range(3)} <= set(run.commands())
    notes = {n: r for n, r in run.commands().items() if n.endswith("-neighbours-note")}
    assert sorted(notes) == ["lab0-neighbours-note", "lab1-neighbours-note", "lab2-neighbours-note"]
    note = notes["lab1-neighbours-note"]
    # depends_on the component waits for all of it: every step, the registry rows last.
    assert note.parent_type == "pulumi:pulumi:Stack" and {"jiji-registry", "lab1-dns", "lab2-dns"} <= set(note.dependencies)
    create = note.inputs["create"]
    words = shlex.split(create)
    body = json.loads(words[words.index("printf") + 2])
    assert body == {
        "motd": "hello from the example",
        "server": "lab1",
        "mesh_address": "10.210.1.1",
        "dns": "10.210.1.1",
        "neighbours": {"lab0": "10.210.0.1", "lab2": "10.210.2.1"},
    }
    assert run.outputs["dns_servers"] == ["10.210.0.1", "10.210.1.1", "10.210.2.1"]
    assert set(run.outputs["mesh"]["servers"]) == {"lab0", "lab1", "lab2"}
    # The SSH key reaches the example's command only as the connection's secret.
    assert SECRET_KEY not in json.dumps({k: v for k, v in note.inputs.items() if k != "connection"})
