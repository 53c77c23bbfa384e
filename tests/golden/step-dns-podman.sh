# Managed by jiji-net: the dns step of web1-dns, run as `sh -s -- apply|remove`.
set -eu
STEP=dns
# shellcheck disable=SC2034 # read by the library's main
OWNER=web1-dns
LIB=/var/lib/jiji-net/staging/steplib.1111111111111111
if [ ! -r "$LIB" ]; then
    printf 'jiji-net: %s: %s: %s is missing; upload it again (pulumi up --replace on the staged-upload of this server, see pulumi stack --show-urns), then run pulumi up\n' "$(hostname)" "$STEP" "$LIB" >&2
    exit 1
fi
# shellcheck source=/dev/null
. "$LIB"
# shellcheck disable=SC2034 # read by the library's main
STAMP=$STATE/steps/$STEP
DNS_STAGED=/var/lib/jiji-net/staging/jiji-dns.5555555555555555
DNS_PYZ=/usr/local/lib/jiji-net/jiji-dns.pyz
TOOL_STAGED=/var/lib/jiji-net/staging/jiji-net.6666666666666666
TOOL=/usr/local/bin/jiji-net
HOST_CONFIG=/etc/jiji/host.json
UNIT=/etc/systemd/system/jiji-dns.service
REGISTRAR_UNIT=/etc/systemd/system/jiji-registrar.service
REJOIN_UNIT=/etc/systemd/system/jiji-rejoin.service
JIT_UNIT=/etc/systemd/system/jiji-jit.service
METRICS_UNIT=/etc/systemd/system/jiji-metrics.service
apply() {
    dns=$(from_upload "$DNS_STAGED" 5555555555555555555555555555555555555555555555555555555555555555 "$DNS_PYZ")
    tool=$(from_upload "$TOOL_STAGED" 6666666666666666666666666666666666666666666666666666666666666666 "$TOOL")
    install_staged "$dns" "$DNS_PYZ"
    install_staged "$tool" "$TOOL"
    for old in "$STAGING"/jiji-dns.* "$STAGING"/jiji-net.*; do
        [ "$old" = "$DNS_STAGED" ] || [ "$old" = "$TOOL_STAGED" ] || rm -f "$old"
    done
    put_file "$HOST_CONFIG" 644 <<'__JIJI_EOF__'
{
  "container_engine": "podman",
  "corrosion_api": "127.0.0.1:9220",
  "domain": "jiji",
  "gossip_port": 9280,
  "mesh_address": "10.210.1.1",
  "server": "web1",
  "subnet": "10.210.1.0/24"
}
__JIJI_EOF__
    put_file "$UNIT" 644 <<'__JIJI_EOF__'
# Managed by jiji-net: changes here are overwritten by the next `pulumi up`.
[Unit]
Description=jiji-dns: service discovery DNS for the jiji mesh
After=network-online.target jiji-corrosion.service
Wants=network-online.target jiji-corrosion.service

[Service]
Type=notify
ExecStart=/usr/bin/python3 /usr/local/lib/jiji-net/jiji-dns.pyz --listen 10.210.1.1:53 --corrosion-api 127.0.0.1:9220 --domain jiji --ttl 60 --recursion-from 10.210.0.0/16,127.0.0.0/8,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16 --stats-socket /run/jiji-dns/stats.sock --metrics-listen 10.210.1.1:9481
Restart=always
RestartSec=2
# A stop signals the supervisor only, which stops its workers itself (SIGKILL for what is left);
# the default signals every process at once, and a worker may end before the supervisor knows.
KillMode=mixed
# Each TCP client and each forward holds a descriptor; the daemon fits its caps to this limit.
LimitNOFILE=65536
# Not root: a user of its own made for the run (nothing it reads is private; the stats socket
# in its runtime directory is reached by `jiji-net`, which runs as root), with the one
# capability it needs, binding port 53.
DynamicUser=yes
RuntimeDirectory=jiji-dns
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
__JIJI_EOF__
    put_file "$REJOIN_UNIT" 644 <<'__JIJI_EOF__'
# Managed by jiji-net: changes here are overwritten by the next `pulumi up`.
[Unit]
Description=jiji-rejoin: brings this server's Corrosion node back into the cluster after a partition
After=jiji-corrosion.service wg-quick@jiji0.service

[Service]
Type=exec
ExecStart=/usr/local/bin/jiji-net rejoin
Restart=always
RestartSec=5
# Its counters for `jiji-net metrics` (removed at stop).
RuntimeDirectory=jiji-rejoin
# Reads `wg show`, `corrosion cluster members` and systemd, sends echo requests over jiji0 and
# restarts one unit: root, but nothing else of the host is written.
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
__JIJI_EOF__
    put_file "$REGISTRAR_UNIT" 644 <<'__JIJI_EOF__'
# Managed by jiji-net: changes here are overwritten by the next `pulumi up`.
[Unit]
Description=jiji-registrar: this server's containers on the jiji network, into the service registry
After=network-online.target jiji-corrosion.service podman.service
Wants=network-online.target jiji-corrosion.service

[Service]
Type=exec
ExecStart=/usr/local/bin/jiji-net registrar --network jiji --reconcile-interval 30
Restart=always
RestartSec=5
# Exit status 2 is a configuration error (no host.json, engine "none"): a restart cannot fix it.
RestartPreventExitStatus=2
# SIGTERM to the registrar only: it ends its own `events` process, then systemd kills leftovers.
KillMode=mixed
TimeoutStopSec=15
# Its counters for `jiji-net metrics` (removed at stop).
RuntimeDirectory=jiji-registrar
# No ProtectSystem/PrivateTmp: the engine's CLI runs as root and writes the engine's own state
# (podman: /var/lib/containers, /run/libpod, /run/containers).

[Install]
WantedBy=multi-user.target
__JIJI_EOF__
    put_file "$METRICS_UNIT" 644 <<'__JIJI_EOF__'
# Managed by jiji-net: changes here are overwritten by the next `pulumi up`.
[Unit]
Description=jiji-metrics: Prometheus metrics of this server's part of the jiji mesh
After=wg-quick@jiji0.service jiji-corrosion.service

[Service]
Type=exec
ExecStart=/usr/local/bin/jiji-net metrics --listen 10.210.1.1:9480
Restart=always
RestartSec=2
# Root, because what it reads is root's (wireguard-go's control socket, jiji0.conf, Corrosion's
# admin socket, the steps' ledgers), with only the capabilities `wg show` and `iptables -S` use.
# It writes nothing; /run stays writable for iptables' lock file.
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW
NoNewPrivileges=yes
ProtectSystem=full
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
__JIJI_EOF__
    if changed "$UNIT" "$REGISTRAR_UNIT" "$REJOIN_UNIT" "$JIT_UNIT" "$METRICS_UNIT"; then systemctl daemon-reload; fi
    if changed "$DNS_PYZ" "$UNIT"; then unit_running jiji-dns yes; else unit_running jiji-dns no; fi
    if changed "$TOOL" "$REJOIN_UNIT"; then unit_running jiji-rejoin yes; else unit_running jiji-rejoin no; fi
    if changed "$TOOL" "$REGISTRAR_UNIT" "$HOST_CONFIG"; then unit_running jiji-registrar yes; else unit_running jiji-registrar no; fi
    if [ -e "$JIT_UNIT" ]; then
        unit_gone jiji-jit
        rm -f "$JIT_UNIT"
        rm -rf /var/lib/jiji-jit
        systemctl daemon-reload
    fi
    if changed "$TOOL" "$METRICS_UNIT"; then unit_running jiji-metrics yes; else unit_running jiji-metrics no; fi
}
remove() {
    unit_gone jiji-metrics
    unit_gone jiji-jit
    unit_gone jiji-registrar
    unit_gone jiji-rejoin
    unit_gone jiji-dns
    rm -f "$UNIT" "$REGISTRAR_UNIT" "$REJOIN_UNIT" "$JIT_UNIT" "$METRICS_UNIT" "$DNS_PYZ" "$TOOL" "$HOST_CONFIG"
    rm -rf /var/lib/jiji-jit
    systemctl daemon-reload
}
main "$@" </dev/null
