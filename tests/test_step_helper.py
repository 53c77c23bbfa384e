"""The step helper (hostbin/jiji_step): what the steps run that is more than shell. These were
here-documents inside the step library, where no test reached them; the lab tests run them in
the steps too (the docker daemon.json and podman tests in test_mesh_on_lab.py)."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from jiji_step import cli, docker_daemon, fetch, netavark, probe
from jiji_step.errors import StepError

from jiji_net import zipapps


class Served:
    """A loopback HTTP server: GET answers `body`, POST /v1/queries answers `[]`; counts requests."""

    def __init__(self) -> None:
        self.body = b""
        self.requests = 0
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, body: bytes) -> None:
                served.requests += 1
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                self._answer(served.body)

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["content-length"]))
                self._answer(b"[]")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    yield s
    s.server.shutdown()
    s.server.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_keeps_a_matching_file_and_deletes_a_mismatch(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "staging" / "corrosion.tgz"
    url = f"http://{served.address}/corrosion.tgz"
    release = b"the pinned release"
    served.body = b"not the release"
    with pytest.raises(StepError, match=f"has SHA-256 {sha(served.body)}, not the pinned {sha(release)}"):
        fetch.download(url, dest, sha(release))
    assert list(dest.parent.iterdir()) == []  # neither the file nor its .part
    served.body = release
    assert fetch.download(url, dest, sha(release)) is True
    assert dest.read_bytes() == release
    served.body, before = b"changed again", served.requests
    assert fetch.download(url, dest, sha(release)) is False  # kept, not fetched again
    assert served.requests == before and dest.read_bytes() == release


def test_download_replaces_a_file_with_other_content(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "corrosion.tgz"
    dest.write_bytes(b"half a rel")  # an interrupted fetch
    served.body = b"the release"
    assert fetch.download(f"http://{served.address}/x", dest, sha(served.body)) is True
    assert dest.read_bytes() == served.body


def test_download_from_nowhere_says_so_and_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "corrosion.tgz"
    with pytest.raises(StepError, match="downloading file:///nonexistent/x failed: .*check the URL"):
        fetch.download("file:///nonexistent/x", dest, "0" * 64)
    with pytest.raises(StepError, match="downloading not a url failed"):
        fetch.download("not a url", dest, "0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_api_answers_only_when_something_answers(served: Served) -> None:
    assert probe.api_answers(served.address)
    served.server.shutdown()
    served.server.server_close()
    assert not probe.api_answers(served.address, timeout=1)


def test_something_else_on_corrosions_port_is_not_yet_and_no_traceback() -> None:
    # Another service holding the port answers with something that is not HTTP (an SSH banner).
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def banner() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            conn.close()

    thread = threading.Thread(target=banner, daemon=True)
    thread.start()
    try:
        assert not probe.api_answers(f"127.0.0.1:{port}", timeout=2)
        assert cli.main(["api-answers", f"127.0.0.1:{port}"]) == 1
    finally:
        thread.join(timeout=5)
        listener.close()


def test_daemon_json_keeps_other_keys_and_is_put_back_byte_for_byte(tmp_path: Path) -> None:
    path, saved = tmp_path / "docker" / "daemon.json", tmp_path / "state" / "docker-daemon.json"
    found = '{"log-driver": "journald",\n   "dns": ["192.0.2.53"], "features": {"buildkit": true}}\n'
    path.parent.mkdir()
    path.write_text(found)
    assert docker_daemon.set_dns(path, saved, "10.210.3.1") is True
    assert json.loads(path.read_text()) == {**json.loads(found), "dns": ["10.210.3.1"]}
    assert docker_daemon.set_dns(path, saved, "10.210.3.1") is False  # no change: dockerd not restarted
    assert docker_daemon.set_dns(path, saved, "10.210.9.1") is True  # the save is of the file as first found
    assert docker_daemon.restore(path, saved) == "changed"
    assert path.read_text() == found and not saved.exists()
    assert docker_daemon.restore(path, saved) == ""  # nothing saved: nothing to do


def test_daemon_json_absent_or_empty_is_put_back_so(tmp_path: Path) -> None:
    path, saved = tmp_path / "docker" / "daemon.json", tmp_path / "saved.json"
    assert docker_daemon.set_dns(path, saved, "10.210.3.1") is True
    assert json.loads(path.read_text()) == {"dns": ["10.210.3.1"]}
    assert docker_daemon.restore(path, saved) == "changed" and not path.exists()
    path.write_text("")  # some installs leave it empty; dockerd reads that as no settings
    assert docker_daemon.set_dns(path, saved, "10.210.3.1") is True
    # dockerd refuses to start with an empty file, so the caller does not restart it.
    assert docker_daemon.restore(path, saved) == "changed-empty" and path.read_text() == ""
    # Deleted by hand while the mesh had it: put back as found.
    path.write_text('{"debug": true}')
    docker_daemon.set_dns(path, saved, "10.210.3.1")
    path.unlink()
    assert docker_daemon.restore(path, saved) == "changed" and path.read_text() == '{"debug": true}'


@pytest.mark.parametrize(
    ("text", "refusal"),
    [("{broken", "is not valid JSON"), ('["dns"]', "holds list, not a JSON object"), ("null", "holds NoneType")],
)
def test_daemon_json_that_is_not_settings_is_refused_and_left_alone(tmp_path: Path, text: str, refusal: str) -> None:
    path, saved = tmp_path / "daemon.json", tmp_path / "saved.json"
    path.write_text(text)
    with pytest.raises(StepError, match=refusal):
        docker_daemon.set_dns(path, saved, "10.210.3.1")
    assert path.read_text() == text and not saved.exists()


def test_podman_network_file_gets_the_bridge_name(tmp_path: Path) -> None:
    path = tmp_path / "jiji.json"
    network = {
        "name": "jiji",
        "driver": "bridge",
        "network_interface": "podman1",
        "subnets": [{"subnet": "10.210.3.0/24"}],
    }
    path.write_text(json.dumps(network))
    netavark.name_interface(path, "jiji-br0")
    assert json.loads(path.read_text()) == {**network, "network_interface": "jiji-br0"}
    path.write_text("[]")
    with pytest.raises(StepError, match="not a podman network file"):
        netavark.name_interface(path, "jiji-br0")
    with pytest.raises(StepError, match="cannot be read as podman's network file"):
        netavark.name_interface(tmp_path / "absent.json", "jiji-br0")


def test_the_command_line_prints_results_and_one_sentence_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, saved = tmp_path / "daemon.json", tmp_path / "saved.json"
    assert cli.main(["docker-dns", str(saved), "10.210.3.1", "--daemon-json", str(path)]) == 0
    assert capsys.readouterr().out == "changed\n"
    assert cli.main(["docker-dns", str(saved), "10.210.3.1", "--daemon-json", str(path)]) == 0
    assert capsys.readouterr().out == ""
    assert cli.main(["docker-restore", str(saved), "--daemon-json", str(path)]) == 0
    assert capsys.readouterr().out == "changed\n"
    path.write_text("{broken")
    assert cli.main(["docker-dns", str(saved), "10.210.3.1", "--daemon-json", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("jiji-net: ") and "is not valid JSON" in err and "Traceback" not in err
    assert cli.main(["api-answers", "127.0.0.1:1"]) == 1


def test_the_step_library_runs_the_helper_from_its_staged_zipapp(tmp_path: Path) -> None:
    from jiji_net import render

    helper = tmp_path / "steplib.x.pyz"
    built = zipapps.build("step")
    helper.write_bytes(built)
    lib = tmp_path / "lib.sh"
    lib.write_text(render.step_library(str(helper), sha(built)))
    target = tmp_path / "daemon.json"
    script = f'STEP=network; . "{lib}"; helper docker-dns "{tmp_path}/saved" 10.1.2.3 --daemon-json "{target}"'

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", "-eu", "-c", script], capture_output=True, text=True, timeout=30)

    out = run()
    assert out.returncode == 0 and out.stdout == "changed\n", out.stderr
    # Its errors name the server and the step, as the library's own messages do.
    target.write_text("{broken")
    out = run()
    assert out.returncode == 1 and f"jiji-net: {socket.gethostname()}: network: {target} is not valid JSON" in out.stderr
    # A damaged or missing helper is not run: it runs as root.
    for damage in (built[:-10], b""):
        helper.write_bytes(damage)
        out = run()
        assert out.returncode == 1 and f"{helper} is missing or does not have SHA-256 {sha(built)}" in out.stderr
        assert out.stdout == "", out.stdout
    helper.unlink()
    assert f"{helper} is missing or does not have" in run().stderr
