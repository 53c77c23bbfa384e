"""Where everything lives on a server: the one place that says so. The program renders these
paths into steps and units (templates read them as `layout.NAME`), the host tool and the daemon
read them at run time. Plain constants, standard library only: it ships inside every zipapp."""

# What the program installs and runs.
LIB_DIR = "/usr/local/lib/jiji-net"
TOOL = "/usr/local/bin/jiji-net"
DNS_PYZ = f"{LIB_DIR}/jiji-dns.pyz"
NETWORK_SCRIPT = f"{LIB_DIR}/network.sh"
CORROSION_BINARY = f"{LIB_DIR}/corrosion"
SYSTEMD_UNITS = "/etc/systemd/system"

# Configuration the program writes.
ETC_DIR = "/etc/jiji"
HOST_CONFIG = f"{ETC_DIR}/host.json"
CORROSION_ETC = f"{ETC_DIR}/corrosion"
CORROSION_CONFIG = f"{CORROSION_ETC}/config.toml"
CORROSION_SCHEMAS = f"{CORROSION_ETC}/schemas"
CORROSION_SCHEMA = f"{CORROSION_SCHEMAS}/jiji.sql"
WIREGUARD_CONF = "/etc/wireguard/jiji0.conf"
# The server's WireGuard private key: made on the server by the host step, never read elsewhere.
WIREGUARD_KEY = "/etc/wireguard/jiji0.key"
PODMAN_DROP_IN = "/etc/containers/containers.conf.d/50-jiji-net.conf"
PODMAN_NETWORK = "/etc/containers/networks/jiji.json"
DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"

# The system's resolver configuration, where jiji-dns finds its upstreams; systemd-resolved's
# stub file points at itself, its real upstreams are in the second.
RESOLV_CONF = "/etc/resolv.conf"
RESOLVED_UPSTREAMS = "/run/systemd/resolve/resolv.conf"

# State: the steps' stamps and staged uploads, and the registry's data.
STATE_DIR = "/var/lib/jiji-net"
STEP_STAMPS = f"{STATE_DIR}/steps"
# The staging tree upload (artifacts.staging_tree) is a directory of this name copied into STATE_DIR.
STAGING = f"{STATE_DIR}/staging"
MESH_TABLE = f"{STAGING}/mesh.tsv"
# What each step's last successful apply installed (its ledger, one file a step: files with their
# SHA-256 and mode, units, firewall chains), and copies of the files it wrote, named by SHA-256,
# root's only: `jiji-net ready` compares the server with the ledgers, `jiji-net repair` puts the
# copies back (see hostbin/jiji_ops/drift.py).
LEDGERS = f"{STATE_DIR}/ledgers"
KEPT = f"{STATE_DIR}/kept"
DATA_DIR = "/var/lib/jiji"
CORROSION_DATA = f"{DATA_DIR}/corrosion"
CORROSION_DB = f"{CORROSION_DATA}/state.db"
# jiji-jit's memory of each access key's newest accepted handshake timestamp (its unit's
# StateDirectory, so systemd makes it; the dns step removes it with the unit).
JIT_STATE_DIR = "/var/lib/jiji-jit"
JIT_TIMESTAMPS = f"{JIT_STATE_DIR}/timestamps.json"

# The peers handed to `wg syncconf`, with the private key: a mktemp template in /run (tmpfs).
WIREGUARD_SYNC_TEMP = "/run/jiji0.sync.XXXXXX"

# Sockets of the running services.
CORROSION_ADMIN_SOCKET = "/run/jiji-corrosion/admin.sock"
DNS_STATS_SOCKET = "/run/jiji-dns/stats.sock"
# Counters of the daemons without an endpoint of their own, read by `jiji-net metrics`
# (jiji_common/counters.py): in each unit's RuntimeDirectory, which systemd removes at its stop.
REGISTRAR_COUNTERS = "/run/jiji-registrar/counters.json"
REJOIN_COUNTERS = "/run/jiji-rejoin/counters.json"
JIT_COUNTERS = "/run/jiji-jit/counters.json"

# Directories the program creates; the host step removes them last, and only when empty.
OWN_DIRS = (
    CORROSION_SCHEMAS,
    CORROSION_ETC,
    ETC_DIR,
    LIB_DIR,
    STAGING,
    STEP_STAMPS,
    LEDGERS,
    KEPT,
    STATE_DIR,
    DATA_DIR,
)
