# Managed by jiji-net: the corrosion step of web1-corrosion, run as `sh -s -- apply|remove`.
set -eu
STEP=corrosion
# shellcheck disable=SC2034 # read by the library's main
OWNER=web1-corrosion
LIB=/var/lib/jiji-net/staging/steplib.1111111111111111
if [ ! -r "$LIB" ]; then
    printf 'jiji-net: %s: %s: %s is missing; upload it again (pulumi up --replace on the staged-upload of this server, see pulumi stack --show-urns), then run pulumi up\n' "$(hostname)" "$STEP" "$LIB" >&2
    exit 1
fi
# shellcheck source=/dev/null
. "$LIB"
# shellcheck disable=SC2034 # read by the library's main
STAMP=$STATE/steps/$STEP
BINARY=/usr/local/lib/jiji-net/corrosion
STAGED=/var/lib/jiji-net/staging/corrosion.3333333333333333
CONFIG=/etc/jiji/corrosion/config.toml
SCHEMA=/etc/jiji/corrosion/schemas/jiji.sql
UNIT=/etc/systemd/system/jiji-corrosion.service
DATA=/var/lib/jiji/corrosion
apply() {
    download https://example.invalid/corrosion "$STAGED" 3333333333333333333333333333333333333333333333333333333333333333
    binary=$(from_upload "$STAGED" 3333333333333333333333333333333333333333333333333333333333333333 "$BINARY")
    install_staged "$binary" "$BINARY"
    for old in "$STAGING"/corrosion.*; do
        [ "$old" = "$STAGED" ] || rm -f "$old"
    done
    mkdir -p "$DATA"
    before=$(without_bootstrap "$CONFIG")
    put_file "$CONFIG" 644 <<'__JIJI_EOF__'
# Managed by jiji-net: changes here are overwritten by the next `pulumi up`.
[db]
path = "/var/lib/jiji/corrosion/state.db"
schema_paths = ["/etc/jiji/corrosion/schemas"]

[gossip]
# Plaintext is safe only because this address is inside WireGuard.
addr = "10.210.1.1:9280"
bootstrap = ["10.210.0.1:9280", "10.210.2.1:9280"]
plaintext = true
max_mtu = 1232

[perf]
max_sync_backoff = 2

[api]
addr = "127.0.0.1:9220"

[admin]
path = "/run/jiji-corrosion/admin.sock"

[log]
colors = false
__JIJI_EOF__
    put_file "$SCHEMA" 644 <<'__JIJI_EOF__'
-- jiji-net registry schema, managed by jiji-net. Corrosion applies it at start (and on
-- `corrosion reload`). cr-sqlite rules: only CREATE TABLE / CREATE INDEX; every table has a
-- NOT NULL primary key; every NOT NULL column has a DEFAULT; no UNIQUE indexes, no foreign keys.
-- Changes must be additive (new tables, new columns with defaults, new indexes).

CREATE TABLE IF NOT EXISTS cluster_metadata (
    key TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL DEFAULT ''
);

CREATE TABLE IF NOT EXISTS servers (
    id TEXT NOT NULL PRIMARY KEY,
    hostname TEXT NOT NULL DEFAULT '',
    subnet TEXT NOT NULL DEFAULT '',
    wireguard_ip TEXT NOT NULL DEFAULT '',
    wireguard_pubkey TEXT NOT NULL DEFAULT '',
    endpoints TEXT NOT NULL DEFAULT '[]',
    last_seen INTEGER NOT NULL DEFAULT 0
);

-- Keyed by (project, name), not name alone: two projects may both have an "api" service.
CREATE TABLE IF NOT EXISTS services (
    project TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (project, name)
);

-- started_at: Unix milliseconds (ISO 8601 text also sorts correctly). project joins services.
CREATE TABLE IF NOT EXISTS containers (
    id TEXT NOT NULL PRIMARY KEY,
    service TEXT NOT NULL DEFAULT '',
    project TEXT NOT NULL DEFAULT '',
    server_id TEXT NOT NULL DEFAULT '',
    ip TEXT NOT NULL DEFAULT '',
    health_status TEXT NOT NULL DEFAULT 'healthy',
    started_at INTEGER NOT NULL DEFAULT 0,
    instance_id TEXT NOT NULL DEFAULT ''
);

CREATE INDEX IF NOT EXISTS containers_server_id ON containers (server_id);
CREATE INDEX IF NOT EXISTS containers_service ON containers (project, service);
CREATE INDEX IF NOT EXISTS containers_health_status ON containers (health_status);

-- Access peers (laptops, CI runners) let into WireGuard just in time by `jiji-net jit`.
-- origin: 'stack' (the registry step keeps these as the stack's access_peers says) or 'cli'
-- (`jiji-net access add`, left alone by the registry step). expires_at: unix seconds, 0 never.
-- The private key is never here: it stays on the peer.
CREATE TABLE IF NOT EXISTS access_peers (
    name TEXT NOT NULL PRIMARY KEY,
    public_key TEXT NOT NULL DEFAULT '',
    address TEXT NOT NULL DEFAULT '',
    expires_at INTEGER NOT NULL DEFAULT 0,
    origin TEXT NOT NULL DEFAULT 'stack'
);

-- What an access peer may reach beyond DNS and ping on the servers' mesh addresses, e.g.
-- 'tcp/22,udp/5353' (jiji_common/allow.py), one row per peer that has any: jiji-jit opens exactly
-- these for the peer while it is in the kernel. A table of its own rather than a column of
-- access_peers, so nodes that made that table before keep their schema as it is.
CREATE TABLE IF NOT EXISTS access_allow (
    name TEXT NOT NULL PRIMARY KEY,
    allow TEXT NOT NULL DEFAULT ''
);
__JIJI_EOF__
    put_file "$UNIT" 644 <<'__JIJI_EOF__'
# Managed by jiji-net: changes here are overwritten by the next `pulumi up`.
[Unit]
Description=Corrosion: the jiji-net service registry (gossip over jiji0)
# Gossip binds the mesh address, which exists once WireGuard is up.
After=network-online.target wg-quick@jiji0.service
Wants=network-online.target wg-quick@jiji0.service

[Service]
ExecStart=/usr/local/lib/jiji-net/corrosion agent -c /etc/jiji/corrosion/config.toml
Restart=always
RestartSec=2
RuntimeDirectory=jiji-corrosion
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
__JIJI_EOF__
    if changed "$UNIT"; then systemctl daemon-reload; fi
    restart=no
    if changed "$BINARY" "$SCHEMA" "$UNIT" || [ "$before" != "$(without_bootstrap "$CONFIG")" ]; then restart=yes; fi
    unit_running jiji-corrosion "$restart"
    deadline=$(( $(date +%s) + 30 ))
    until api_answers 127.0.0.1:9220; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            journalctl -u jiji-corrosion -n 20 --no-pager >&2 || true
            fail "jiji-corrosion is running but its API on 127.0.0.1:9220 does not answer after 30 s (its log is above)"
        fi
        sleep 0.5
    done
}
remove() {
    unit_gone jiji-corrosion
    rm -f "$UNIT" "$CONFIG" "$SCHEMA" "$BINARY"
    systemctl daemon-reload
    rm -rf "$DATA"
}
main "$@" </dev/null
