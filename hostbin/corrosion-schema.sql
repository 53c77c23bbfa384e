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
