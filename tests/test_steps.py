"""The step scripts (pure rendering) and the mesh table's peers, rendered by the same awk program
the servers run, against golden copies."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from jiji_net import render, steps, topology, zipapps
from jiji_net.model import CorrosionSource, MeshSettings, Server
from jiji_net.plan import plan_addresses
from tests.test_plan import golden

AWK = Path(render.__file__).parent / "templates" / "steps" / "wireguard-peers.awk"
SETTINGS = MeshSettings(corrosion=CorrosionSource(local_path="/cache/corrosion"), container_engine="none")


def servers(n: int = 3) -> list[Server]:
    return [Server(name=f"web{i}", host=f"198.18.0.{10 + i}", index=i, endpoint=f"198.18.0.{10 + i}") for i in range(n)]


def table(members: list[Server], settings: MeshSettings = SETTINGS) -> str:
    plans = plan_addresses(settings, members)
    keys = {s.name: f"PUBKEY{s.index}" + "A" * 37 + "=" for s in members}
    return render.mesh_table(topology.mesh_rows(settings, members, plans, keys))


def peers(text: str, server: Server, tmp_path: Path) -> str:
    """What `server` makes of the table: the awk program its wireguard step runs."""
    path = tmp_path / "mesh.tsv"
    path.write_text(text)
    network = topology.private_network_of(server)
    out = subprocess.run(
        [
            "awk",
            "-v",
            f"self={server.name}",
            "-v",
            f"network={network}",
            "-v",
            "keepalive=25",
            "-f",
            str(AWK),
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def test_jiji0_conf_golden_and_secret_free(tmp_path: Path) -> None:
    ss = servers(3)
    plans = plan_addresses(SETTINGS, ss)
    conf = render.wireguard_interface(SETTINGS, plans["web1"]) + peers(table(ss), ss[1], tmp_path)
    golden("web1-jiji0.conf", conf)
    assert "PrivateKey" not in conf


def test_a_peer_on_the_same_private_network_is_reached_there(tmp_path: Path) -> None:
    a = Server(name="a", host="h1", index=0, endpoint="203.0.113.1", private_address="10.0.1.5")
    b = Server(name="b", host="h2", index=1, endpoint="203.0.113.2", private_address="10.0.1.6/24")
    c = Server(name="c", host="h3", index=2, endpoint="100.64.3.3:41820", private_address="10.9.9.9")
    text = table([a, b, c])
    assert "Endpoint = 10.0.1.6:51820" in peers(text, a, tmp_path)
    assert "Endpoint = 100.64.3.3:41820" in peers(text, a, tmp_path)  # another private network: its endpoint
    assert "Endpoint = 203.0.113.1:51820" in peers(text, c, tmp_path)
    assert "# a\n" not in peers(text, a, tmp_path)


def test_a_damaged_table_stops_the_step(tmp_path: Path) -> None:
    path = tmp_path / "mesh.tsv"
    path.write_text("web0\t0\t10.210.0.0/24\n")
    out = subprocess.run(["awk", "-v", "self=x", "-v", "network=-", "-v", "keepalive=25", "-f", str(AWK), str(path)],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 1 and "mesh table line 1 has 3 fields, not 7" in out.stderr


def test_table_values_with_whitespace_are_refused() -> None:
    row = {c: "x" for c in render.MESH_TABLE_COLUMNS} | {"name": "a", "endpoint": "1.2.3.4 5"}
    with pytest.raises(ValueError, match="has whitespace"):
        render.mesh_table([row])


def test_file_content_cannot_end_the_here_document() -> None:
    with pytest.raises(ValueError, match="here-document marker"):
        steps.registry_step("registry", "0" * 64, "ok\n__JIJI_EOF__\nrm -rf /\n")
    with pytest.raises(ValueError, match="must end with a newline"):
        steps.registry_step("registry", "0" * 64, "{}")


def test_seeds_are_the_first_few_others_so_a_new_server_changes_nobody() -> None:
    plans = plan_addresses(SETTINGS, servers(6))
    everyone = list(plans.values())
    assert [p.name for p in topology.seeds_of(plans["web0"], everyone)] == ["web1", "web2"]
    assert [p.name for p in topology.seeds_of(plans["web4"], everyone)] == ["web0", "web1"]
    assert topology.seeds_of(plans["web2"], everyone[:3]) == topology.seeds_of(plans["web2"], everyone)


def test_256_servers_render_65280_peer_entries_without_quadratic_work(tmp_path: Path) -> None:
    # Not a speed test (bench/ has those): a guard against quadratic work per peer entry, by the
    # ratio of two sizes in one run (seconds depend on the machine, their ratio does not).
    def many(n: int) -> list[Server]:
        return [Server(name=f"s{i}", host=f"h{i}", index=i, endpoint=f"203.0.{i // 250}.{i % 250 + 1}") for i in range(n)]

    ss = many(256)
    text = table(ss)
    entries = sum(peers(text, s, tmp_path).count("[Peer]") for s in ss[:8])
    assert entries == 8 * 255 and len(text) < 256 * 120

    def least_time(members: list[Server]) -> float:
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            table(members)
            best = min(best, time.perf_counter() - started)
        return best

    # 4x the servers: ~4x the work when linear, 16x when quadratic.
    ratio = least_time(many(256)) / least_time(many(64))
    assert ratio < 10, f"256 servers took {ratio:.1f}x the time of 64"


def test_comments_leave_scripts_but_never_the_files_they_install() -> None:
    script = (
        "# Managed by jiji-net: what this is\n"
        "set -eu\n"
        "\n"
        "    # why, for the reader of the template\n"
        "# shellcheck disable=SC2034\n"
        "put_file \"$X\" 644 <<'__JIJI_EOF__'\n"
        "# a comment of the installed file\n"
        "\n"
        "key = 1\n"
        "__JIJI_EOF__\n"
        'main "$@" # trailing comments stay\n'
    )
    assert steps.without_comments(script) == (
        "# Managed by jiji-net: what this is\n"
        "set -eu\n"
        "# shellcheck disable=SC2034\n"
        "put_file \"$X\" 644 <<'__JIJI_EOF__'\n"
        "# a comment of the installed file\n"
        "\n"
        "key = 1\n"
        "__JIJI_EOF__\n"
        'main "$@" # trailing comments stay\n'
    )


@pytest.mark.parametrize("engine", ["none", "podman", "docker"])
def test_containers_on_the_engines_other_networks_keep_dns_only_with_an_engine(engine: str) -> None:
    """docker's and podman's DNS setting is host-wide: with an engine, jiji-dns answers (and
    recurses for) its other bridges too; with none there are no such bridges to open to."""
    settings = MeshSettings(corrosion=SETTINGS.corrosion, container_engine=engine)  # type: ignore[arg-type]
    plan = plan_addresses(settings, servers(1))["web0"]
    script = render.network_script(settings, plan, render.BRIDGE)
    unit = render.dns_unit(settings, plan)
    opened = [line for line in script.splitlines() if "-i podman+" in line or "-i br-+" in line]
    if engine == "none":
        assert not opened and "172.16.0.0/12" not in unit
    else:
        assert len(opened) == 4 and all("--dport 53 -j ACCEPT" in line for line in opened), opened
        assert "--recursion-from 10.210.0.0/16,127.0.0.0/8,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16" in unit
        # Opened before the rule that drops the mesh's services for everyone else.
        drop = next(i for i, line in enumerate(script.splitlines()) if "--dports" in line and "-j DROP" in line)
        assert all(script.splitlines().index(line) < drop for line in opened)


def test_a_download_that_does_not_match_its_pin_is_deleted_and_fetched_again(tmp_path: Path) -> None:
    """A changed release at the pinned URL fails the step and leaves nothing staged; once the URL
    serves the pinned file again the next run fetches and keeps it (it used to keep the bad file,
    so every later run failed on it)."""
    import hashlib
    import http.server
    import threading

    served = {"body": b"not the release"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.end_headers()
            self.wfile.write(served["body"])

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    helper = tmp_path / "jiji-step.pyz"
    helper.write_bytes(zipapps.build("step"))
    lib = tmp_path / "lib.sh"
    lib.write_text(render.step_library(str(helper), hashlib.sha256(helper.read_bytes()).hexdigest()))
    staged = tmp_path / "staging" / "corrosion.tgz"
    release = b"the pinned release"
    pin = hashlib.sha256(release).hexdigest()
    url = f"http://127.0.0.1:{server.server_address[1]}/corrosion.tgz"

    def run() -> subprocess.CompletedProcess[str]:
        script = f'STEP=corrosion; . "{lib}"; download "{url}" "{staged}" {pin}'
        return subprocess.run(["sh", "-eu", "-c", script], capture_output=True, text=True, timeout=60)

    try:
        bad = run()
        assert bad.returncode != 0
        assert f"{url} has SHA-256 {hashlib.sha256(served['body']).hexdigest()}, not the pinned {pin}" in bad.stderr
        assert not staged.exists() and not Path(f"{staged}.part").exists()
        served["body"] = release
        good = run()
        assert good.returncode == 0, good.stderr
        assert staged.read_bytes() == release
        served["body"] = b"changed again"  # fetched once: a good staged file is kept
        assert run().returncode == 0 and staged.read_bytes() == release
    finally:
        server.shutdown()
        server.server_close()


def test_a_removed_unit_leaves_no_failed_record(tmp_path: Path) -> None:
    """A unit that ended failed on its stop (a worker ending before its supervisor knew, once in
    CI) stayed in `systemctl --failed` after destroy: unit_gone clears the record on every path.
    systemctl here is a stand-in that records its calls; what it must be called with is the point."""
    import hashlib
    import os

    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n[ "$1 $2" != "disable --now" ] || exit "$DISABLE_EXIT"\n')
    fake.chmod(0o755)
    helper = tmp_path / "jiji-step.pyz"
    helper.write_bytes(zipapps.build("step"))
    lib = tmp_path / "lib.sh"
    lib.write_text(render.step_library(str(helper), hashlib.sha256(helper.read_bytes()).hexdigest()))
    for disable_exit in ("0", "1"):  # the stop ends as it should; the stop hangs or fails
        calls.unlink(missing_ok=True)
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", DISABLE_EXIT=disable_exit)
        run = subprocess.run(
            ["sh", "-eu", "-c", f'STEP=dns; . "{lib}"; unit_gone jiji-dns'],
            capture_output=True, text=True, timeout=60, env=env,
        )
        assert run.returncode == 0, run.stderr
        made = calls.read_text().splitlines()
        assert made[0] == "disable --now --quiet jiji-dns" and made[-1] == "reset-failed jiji-dns", made


def test_a_live_peer_sync_keeps_the_access_route(tmp_path: Path) -> None:
    """A server added or removed syncs jiji0's peers live and drops routes of peers that left;
    the access range's route (made by jiji0.conf's PostUp, no peer's allowed-ips) must stay, or
    replies to every laptop leave by the default route. `wg` and `ip` are stand-ins that record
    their calls and report two peers' subnets and the routes on jiji0."""
    import hashlib
    import os

    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "wg").write_text(
        "#!/bin/sh\n"
        f'echo "wg $*" >> {calls}\n'
        'case "$1 $3" in "show allowed-ips") printf "K1\\t10.210.1.0/24\\nK2\\t10.210.2.0/24\\n";; esac\n'
        '[ "$1" != wg-quick ] || true\n'
    )
    (bin_dir / "wg-quick").write_text("#!/bin/sh\nprintf '[Interface]\\n'\n")
    (bin_dir / "ip").write_text(
        "#!/bin/sh\n"
        f'echo "ip $*" >> {calls}\n'
        'case "$*" in "-4 route show dev jiji0") printf "10.210.1.0/24 scope link\\n10.210.9.0/24 scope link\\n10.211.0.0/16 scope link\\n";; esac\n'
    )
    for tool in ("wg", "wg-quick", "ip"):
        (bin_dir / tool).chmod(0o755)
    key = tmp_path / "jiji0.key"
    key.write_text("not a key\n")
    helper = tmp_path / "jiji-step.pyz"
    helper.write_bytes(zipapps.build("step"))
    lib = tmp_path / "lib.sh"
    text = render.step_library(str(helper), hashlib.sha256(helper.read_bytes()).hexdigest())
    lib.write_text(text.replace("/run/jiji0.sync.XXXXXX", str(tmp_path / "sync.XXXXXX")))
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    for access in ("10.211.0.0/16", ""):
        calls.unlink(missing_ok=True)
        run = subprocess.run(
            ["sh", "-eu", "-c", f'STEP=wireguard; . "{lib}"; wireguard_sync jiji0 "{key}" "{access}"'],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        made = calls.read_text().splitlines()
        assert "ip route del 10.210.9.0/24 dev jiji0" in made  # a peer that left: its route goes
        assert "ip route del 10.210.1.0/24 dev jiji0" not in made
        if access:
            assert "ip route del 10.211.0.0/16 dev jiji0" not in made and made[-1] == "ip route replace 10.211.0.0/16 dev jiji0"
        else:
            assert "ip route del 10.211.0.0/16 dev jiji0" in made  # with access off, nothing keeps it
