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
