"""Shell scripts the components run on servers (pure strings; create/update/delete triples).

Each `create` is idempotent on its own and each `delete` undoes exactly what `create` did.
No script contains a secret: file contents travel on stdin, private keys never leave the server.
"""

from __future__ import annotations

from .render import KEY_PATH

WG_CONF = "/etc/wireguard/jiji0.conf"
INTERFACE = "jiji0"

# Generates the key pair once; later runs only print the public key. The private key is written
# with umask 077 and never printed.
WG_KEY_CREATE = f"""set -eu
umask 077
mkdir -p /etc/wireguard
if [ ! -s {KEY_PATH} ]; then wg genkey > {KEY_PATH}.new && mv {KEY_PATH}.new {KEY_PATH}; fi
wg pubkey < {KEY_PATH}
"""

WG_KEY_DELETE = f"rm -f {KEY_PATH}\n"

# stdin: the rendered jiji0.conf. Applied live with `wg syncconf` when the interface is up
# (peers change without an interface restart or lost handshakes); the stripped config gets the
# private key inserted on the server, because syncconf with a key-less config removes the key.
WG_CONF_APPLY = f"""set -eu
umask 077
cat > {WG_CONF}.new
mv {WG_CONF}.new {WG_CONF}
if ip link show {INTERFACE} >/dev/null 2>&1; then
    wg-quick strip {INTERFACE} \\
        | awk -v key="$(cat {KEY_PATH})" '{{print}} /^\\[Interface\\]/ {{print "PrivateKey = " key}}' \\
        > /run/jiji0.sync
    wg syncconf {INTERFACE} /run/jiji0.sync
    rm -f /run/jiji0.sync
    # Routes for AllowedIPs of new peers (syncconf does not add routes).
    for net in $(wg show {INTERFACE} allowed-ips | awk '{{for (i = 2; i <= NF; i++) print $i}}'); do
        ip route replace "$net" dev {INTERFACE}
    done
fi
systemctl enable --now wg-quick@{INTERFACE} >/dev/null 2>&1
"""

WG_CONF_DELETE = f"""set -eu
systemctl disable --now wg-quick@{INTERFACE} >/dev/null 2>&1 || true
ip link del {INTERFACE} 2>/dev/null || true
rm -f {WG_CONF}
"""


# Directories the program creates; removed at the very end of a destroy, and only when empty.
OWN_DIRS = (
    "/etc/jiji/corrosion/schemas",
    "/etc/jiji/corrosion",
    "/etc/jiji",
    "/usr/local/lib/jiji-net",
    "/var/lib/jiji-net/staging",
    "/var/lib/jiji-net",
    "/var/lib/jiji",
)
STAGING = "/var/lib/jiji-net/staging"

_ENGINE_COMMANDS = {"docker": "docker", "podman": "podman", "none": ""}


def preflight(engine: str) -> str:
    """Fails with a message naming what is missing, before anything is changed on the server."""
    needed = "wg wg-quick ip iptables python3 systemctl sha256sum " + _ENGINE_COMMANDS[engine]
    return f"""set -eu
if [ "$(id -u)" != 0 ]; then
    echo "jiji-net: $(hostname): connected as $(id -un); the steps change system files, so connect as root (servers[].user)." >&2
    exit 1
fi
missing=""
for c in {needed.strip()}; do command -v "$c" >/dev/null 2>&1 || missing="$missing $c"; done
if ! ip link add jiji-probe0 type wireguard 2>/dev/null; then
    command -v wireguard-go >/dev/null 2>&1 || missing="$missing wireguard(kernel-module-or-wireguard-go)"
else
    ip link del jiji-probe0
fi
if [ -n "$missing" ]; then
    echo "jiji-net: $(hostname) lacks:$missing. Install them (Debian: apt-get install wireguard-tools iproute2 iptables python3), then run pulumi up again." >&2
    exit 1
fi
mkdir -p {STAGING}
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {{
    echo "jiji-net: $(hostname) has python3 < 3.11; jiji-dns needs 3.11 or later." >&2; exit 1; }}
echo ready
"""


HOST_CLEANUP = "rmdir " + " ".join(OWN_DIRS) + " 2>/dev/null || true\n"


def file_write(path: str, mode: str = "644") -> str:
    """stdin: the file's content. Written atomically (temp file, then rename)."""
    directory = path.rsplit("/", 1)[0]
    return f"""set -eu
mkdir -p {directory}
cat > {path}.jiji-new
chmod {mode} {path}.jiji-new
mv -f {path}.jiji-new {path}
"""


def file_delete(path: str, systemd_unit: bool = False) -> str:
    reload = "systemctl daemon-reload\n" if systemd_unit else ""
    return f"rm -f {path}\n{reload}"


def staged_path(name: str, sha256: str) -> str:
    """Where an artifact is uploaded before it is checked and installed: keyed by content."""
    return f"{STAGING}/{name}.{sha256[:16]}"


def artifact_install(staged: str, final: str, sha256: str, member: str | None = None) -> str:
    """Checks the staged file's SHA-256, then installs it (or `member` from inside it, for a
    release tarball) with a rename, which is safe while the old binary runs."""
    copy = f"tar -xzOf {staged} --wildcards '*{member}' > {final}.jiji-new" if member else f"cp {staged} {final}.jiji-new"
    upload = staged.rsplit("/", 1)[1].rsplit(".", 1)[0] + "-upload"
    return f"""set -eu
echo "{sha256}  {staged}" | sha256sum -c --quiet - || {{
    echo "jiji-net: {staged} does not have SHA-256 {sha256}: the transfer was damaged." >&2
    echo "Upload it again: pulumi up --replace <URN of this server's {upload} resource> (pulumi stack --show-urns)." >&2
    exit 1; }}
mkdir -p {final.rsplit("/", 1)[0]}
{copy}
chmod 755 {final}.jiji-new
mv -f {final}.jiji-new {final}
# Earlier versions of this file staged by earlier runs.
for old in {staged.rsplit(".", 1)[0]}.*; do [ "$old" = {staged} ] || rm -f "$old"; done
"""


def artifact_download(url: str, staged: str) -> str:
    """Fetches a release on the server (it must reach the URL); install checks the checksum."""
    return f"""set -eu
mkdir -p {STAGING}
if [ ! -s {staged} ]; then
    python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \\
        '{url}' {staged}.part
    mv -f {staged}.part {staged}
fi
"""


def artifact_delete(*paths: str) -> str:
    return "rm -f " + " ".join(paths) + "\n"


def service_apply(unit: str, inputs_sha256: str, ready_check: str | None = None, ready_timeout: int = 30) -> str:
    """(Re)starts a unit. The hash of what the unit runs is in the command so a change restarts it.
    `ready_check` is a command that succeeds once the unit really serves: a unit that only says it
    started (Type=simple) fails the step, with its log, so the next `up` restarts it."""
    wait = (
        f"""deadline=$(( $(date +%s) + {ready_timeout} ))
until {ready_check}; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        journalctl -u {unit} -n 20 --no-pager >&2
        echo "jiji-net: {unit} is running but not serving after {ready_timeout} s (see its log above)" >&2
        exit 1
    fi
    sleep 0.5
done
"""
        if ready_check
        else ""
    )
    return f"""set -eu
# inputs sha256: {inputs_sha256}
systemctl daemon-reload
systemctl enable {unit} >/dev/null 2>&1
if ! systemctl restart {unit} || ! systemctl is-active --quiet {unit}; then
    journalctl -u {unit} -n 20 --no-pager >&2
    exit 1
fi
{wait}"""


def corrosion_api_answers(api: str) -> str:
    """A shell condition: the Corrosion API at `api` answers a query within 2 s."""
    return (
        "python3 -c 'import sys, urllib.request; urllib.request.urlopen(urllib.request.Request("
        f'"http://{api}/v1/queries", data=b"\\"SELECT 1\\"", headers={{"content-type": "application/json"}}),'
        " timeout=2).read()' 2>/dev/null"
    )


def service_delete(unit: str) -> str:
    return f"systemctl disable --now {unit} >/dev/null 2>&1 || true\n"


def directory_create(path: str) -> str:
    return f"mkdir -p {path}\n"


def directory_delete(path: str) -> str:
    """Deletes data on purpose: only on destroy or when a server leaves the stack."""
    return f"rm -rf {path}\n"


IP_FORWARD_SAVED = "/var/lib/jiji-net/ip_forward.before"

# ip_forward is remembered before the network unit first turns it on, and restored on delete.
IP_FORWARD_SAVE = f"""set -eu
mkdir -p /var/lib/jiji-net
[ -e {IP_FORWARD_SAVED} ] || cat /proc/sys/net/ipv4/ip_forward > {IP_FORWARD_SAVED}
"""
IP_FORWARD_RESTORE = f"""set -eu
if [ -e {IP_FORWARD_SAVED} ]; then
    before=$(cat {IP_FORWARD_SAVED})
    [ "$(cat /proc/sys/net/ipv4/ip_forward)" = "$before" ] || sysctl -qw net.ipv4.ip_forward="$before"
    rm -f {IP_FORWARD_SAVED}
fi
"""


BRIDGE = "jiji-br0"
DOCKER_DNS_SAVED = "/var/lib/jiji-net/docker-dns.before.json"
PODMAN_DROP_IN = "/etc/containers/containers.conf.d/50-jiji-net.conf"


def docker_network_apply(subnet: str, gateway: str, mtu: int) -> str:
    """The `jiji` network on this server's subnet, and `dns` merged into daemon.json (other keys
    kept; the previous `dns` value saved once so delete can put it back)."""
    return f"""set -eu
mkdir -p /var/lib/jiji-net
docker network inspect jiji >/dev/null 2>&1 || docker network create --driver bridge \\
    --subnet {subnet} --gateway {gateway} \\
    --opt com.docker.network.bridge.name={BRIDGE} --opt com.docker.network.driver.mtu={mtu} \\
    --opt com.docker.network.bridge.trusted_host_interfaces=jiji0 jiji >/dev/null
changed=$(python3 - <<'PY'
import json, os
path, saved, want = "/etc/docker/daemon.json", "{DOCKER_DNS_SAVED}", ["{gateway}"]
try:
    with open(path) as f:
        config = json.load(f)
except FileNotFoundError:
    config = {{}}
except ValueError as e:
    raise SystemExit(f"jiji-net: {{path}} is not valid JSON ({{e}}); fix it, then run pulumi up again")
if not os.path.exists(saved):
    with open(saved, "w") as f:
        json.dump({{"had_dns": "dns" in config, "dns": config.get("dns")}}, f)
if config.get("dns") != want:
    config["dns"] = want
    with open(path + ".jiji-new", "w") as f:
        json.dump(config, f, indent=2)
    os.replace(path + ".jiji-new", path)
    print("yes")
PY
)
# dockerd reads "dns" only at start.
if [ "$changed" = yes ]; then systemctl restart docker; fi
"""


DOCKER_NETWORK_DELETE = f"""set -eu
docker network rm jiji >/dev/null 2>&1 || true
if [ -e {DOCKER_DNS_SAVED} ]; then
    python3 - <<'PY'
import json, os
path, saved = "/etc/docker/daemon.json", "{DOCKER_DNS_SAVED}"
with open(saved) as f:
    before = json.load(f)
with open(path) as f:
    config = json.load(f)
if before["had_dns"]:
    config["dns"] = before["dns"]
else:
    config.pop("dns", None)
with open(path + ".jiji-new", "w") as f:
    json.dump(config, f, indent=2)
os.replace(path + ".jiji-new", path)
os.remove(saved)
PY
    systemctl restart docker
fi
"""


def podman_network_apply(subnet: str, gateway: str, mtu: int) -> str:
    """The `jiji` network, and DNS through a containers.conf drop-in (the main file is untouched)."""
    return f"""set -eu
podman network exists jiji || podman network create --driver bridge --subnet {subnet} --gateway {gateway} \\
    --interface-name {BRIDGE} --opt mtu={mtu} jiji >/dev/null
mkdir -p {PODMAN_DROP_IN.rsplit("/", 1)[0]}
printf '# Managed by jiji-net.\\n[containers]\\ndns_servers = ["{gateway}"]\\n' > {PODMAN_DROP_IN}
"""


PODMAN_NETWORK_DELETE = f"""podman network rm jiji >/dev/null 2>&1 || true
rm -f {PODMAN_DROP_IN}
"""
