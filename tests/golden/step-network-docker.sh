# Managed by jiji-net: the network step of web1-network, run as `sh -s -- apply|remove`.
set -eu
STEP=network
# shellcheck disable=SC2034 # read by the library's main
OWNER=web1-network
LIB=/var/lib/jiji-net/staging/steplib.1111111111111111
if [ ! -r "$LIB" ]; then
    printf 'jiji-net: %s: %s: %s is missing; upload it again (pulumi up --replace on the staged-upload of this server, see pulumi stack --show-urns), then run pulumi up\n' "$(hostname)" "$STEP" "$LIB" >&2
    exit 1
fi
# shellcheck source=/dev/null
. "$LIB"
# shellcheck disable=SC2034 # read by the library's main
STAMP=$STATE/steps/$STEP
SCRIPT=/usr/local/lib/jiji-net/network.sh
UNIT=/etc/systemd/system/jiji-net-network.service
BRIDGE=jiji-br0
ENGINE=docker
engine_gone() {
    case "$1" in
    docker) docker_gone "$DOCKER_SAVED" ;;
    podman) podman_gone "$PODMAN_DROP_IN" ;;
    none) ip link del "$BRIDGE" 2>/dev/null || true ;;
    esac
}
preflight() { refuse_busy_switch "$ENGINE" "$BRIDGE"; }
docker_network() {
    if docker network inspect jiji >/dev/null 2>&1; then
        have=$(docker network inspect jiji --format '{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}} {{index .Options "com.docker.network.driver.mtu"}}')
        if [ "$have" != '10.210.1.0/24 10.210.1.1 1420' ]; then
            fail "docker network jiji has subnet/gateway/mtu '$have', the stack wants '10.210.1.0/24 10.210.1.1 1420'; stop its containers and run 'docker network rm jiji', then pulumi up again"
        fi
        return 0
    fi
    docker network create --driver bridge --subnet 10.210.1.0/24 --gateway 10.210.1.1 \
        --opt com.docker.network.bridge.name="$BRIDGE" --opt com.docker.network.driver.mtu=1420 \
        --opt com.docker.network.bridge.trusted_host_interfaces=jiji0 jiji >/dev/null
}
apply() {
    mkdir -p "$STATE"
    previous=$(previous_engine "$BRIDGE")
    if [ -n "$previous" ] && [ "$previous" != "$ENGINE" ]; then
        say "container_engine $previous -> $ENGINE: removing what was set up for $previous"
        engine_gone "$previous"
    fi
    [ -e "$FORWARD_SAVED" ] || cat /proc/sys/net/ipv4/ip_forward > "$FORWARD_SAVED"
    put_file "$SCRIPT" 755 <<'__JIJI_EOF__'
#!/bin/sh
# Managed by jiji-net: changes here are overwritten by the next `pulumi up`.
# Container network of this server: forwarding, NAT for traffic
# leaving the mesh, and the firewall of the mesh. `up` is idempotent (chains are emptied and
# refilled in one transaction); `down` removes the rules `up` made.
set -eu
SUBNET=10.210.1.0/24
CLUSTER=10.210.0.0/16
MESH=10.210.1.1
BRIDGE=jiji-br0
# Other servers' mesh addresses are the first host of their subnets: this mask picks the host part.
HOST_PART=0.0.0.1/0.0.0.255

# The chain jiji-jit fills with access peers' allowed ports: made here, left out of the restore
# below (which would empty it), and removed with the rest.
access_chain_gone() {
    iptables -w -F JIJI-ACCESS 2>/dev/null || true
    iptables -w -X JIJI-ACCESS 2>/dev/null || true
}

remove_rules() {
    iptables -w -D INPUT -j JIJI-INPUT 2>/dev/null || true
    iptables -w -D FORWARD -j JIJI-FORWARD 2>/dev/null || true
    iptables -w -t nat -D POSTROUTING -j JIJI-POSTROUTING 2>/dev/null || true
    for chain in JIJI-INPUT JIJI-FROM-MESH JIJI-FORWARD; do
        iptables -w -F "$chain" 2>/dev/null || true
    done
    for chain in JIJI-INPUT JIJI-FROM-MESH JIJI-FORWARD; do
        iptables -w -X "$chain" 2>/dev/null || true
    done
    iptables -w -t nat -F JIJI-POSTROUTING 2>/dev/null || true
    iptables -w -t nat -X JIJI-POSTROUTING 2>/dev/null || true
    access_chain_gone
}

# jump CHAIN TARGET [TABLE]: restore lines putting the jump from CHAIN to TARGET first in CHAIN
# (dropping the one already there, wherever an engine's own rules moved it).
jump() {
    if iptables -w -t "${3:-filter}" -C "$1" -j "$2" 2>/dev/null; then echo "-D $1 -j $2"; fi
    echo "-I $1 1 -j $2"
}

rules_filter() {
    cat <<EOF
:JIJI-INPUT - [0:0]
:JIJI-FROM-MESH - [0:0]
:JIJI-FORWARD - [0:0]
# Traffic to this host. ACCEPT for what the mesh needs (so a host whose INPUT policy is DROP
# works), DROP for what must not reach it, RETURN (the host's own rules) for everything else.
-A JIJI-INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A JIJI-INPUT -p udp --dport 51820 -j ACCEPT
-A JIJI-INPUT -i lo -p tcp -m multiport --dports 53,9280,9220 -j ACCEPT
-A JIJI-INPUT -i lo -p udp -m multiport --dports 53,9280,9220 -j ACCEPT
# Prometheus endpoints: this server (lo) and, below, the other servers over jiji0; nobody else.
-A JIJI-INPUT -i lo -p tcp -m multiport --dports 9480,9481 -j ACCEPT
# Over jiji0, WireGuard vouches for the source subnet; a source that is a mesh address is another server.
-A JIJI-FROM-MESH -s $HOST_PART -j ACCEPT
-A JIJI-FROM-MESH -p tcp -d $MESH --dport 53 -j ACCEPT
-A JIJI-FROM-MESH -p udp -d $MESH --dport 53 -j ACCEPT
-A JIJI-FROM-MESH -p icmp -j ACCEPT
-A JIJI-FROM-MESH -j DROP
-A JIJI-INPUT -i jiji0 -s $CLUSTER -j JIJI-FROM-MESH
-A JIJI-INPUT -i jiji0 -j DROP
# Containers here: DNS and ping on the gateway; nothing else of the host.
-A JIJI-INPUT -i $BRIDGE -p tcp -d $MESH --dport 53 -j ACCEPT
-A JIJI-INPUT -i $BRIDGE -p udp -d $MESH --dport 53 -j ACCEPT
-A JIJI-INPUT -i $BRIDGE -p icmp -j ACCEPT
-A JIJI-INPUT -i $BRIDGE -j DROP
# Containers on the engine's other networks use this host's DNS setting too.
-A JIJI-INPUT -i podman+ -p udp -d $MESH --dport 53 -j ACCEPT
-A JIJI-INPUT -i podman+ -p tcp -d $MESH --dport 53 -j ACCEPT
# Containers on the engine's other networks use this host's DNS setting too.
-A JIJI-INPUT -i cni-podman+ -p udp -d $MESH --dport 53 -j ACCEPT
-A JIJI-INPUT -i cni-podman+ -p tcp -d $MESH --dport 53 -j ACCEPT
# Containers on the engine's other networks use this host's DNS setting too.
-A JIJI-INPUT -i docker+ -p udp -d $MESH --dport 53 -j ACCEPT
-A JIJI-INPUT -i docker+ -p tcp -d $MESH --dport 53 -j ACCEPT
# Containers on the engine's other networks use this host's DNS setting too.
-A JIJI-INPUT -i br-+ -p udp -d $MESH --dport 53 -j ACCEPT
-A JIJI-INPUT -i br-+ -p tcp -d $MESH --dport 53 -j ACCEPT
# From anywhere else (the underlay), the mesh's own services are not there.
-A JIJI-INPUT -d $MESH -p tcp -m multiport --dports 53,9280 -j DROP
-A JIJI-INPUT -d $MESH -p udp -m multiport --dports 53,9280 -j DROP
-A JIJI-INPUT -d $MESH -p tcp -m multiport --dports 9480,9481 -j DROP
# Forwarding: containers here and on other servers reach each other with their own addresses;
# nobody else gets into the container subnet, and no container may pose as this host.
-A JIJI-FORWARD -i $BRIDGE -s $MESH -j DROP
-A JIJI-FORWARD -i $BRIDGE ! -s $SUBNET -j DROP
-A JIJI-FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A JIJI-FORWARD -i $BRIDGE -o jiji0 -d $CLUSTER -j ACCEPT
-A JIJI-FORWARD -i jiji0 -s $CLUSTER -o $BRIDGE -d $SUBNET -j ACCEPT
-A JIJI-FORWARD -o $BRIDGE -d $SUBNET -j DROP
-A JIJI-FORWARD -i $BRIDGE ! -d $CLUSTER -j ACCEPT
EOF
}

# NAT only for traffic leaving the mesh. ACCEPT ends the nat chain, so an engine's own
# MASQUERADE further down never rewrites mesh-bound packets.
rules_nat() {
    cat <<EOF
:JIJI-POSTROUTING - [0:0]
-A JIJI-POSTROUTING -s $SUBNET -d $CLUSTER -j ACCEPT
-A JIJI-POSTROUTING -s $SUBNET ! -o $BRIDGE -j MASQUERADE
EOF
}

case "${1:-}" in
up)
    # Written only when off: some container hosts keep /proc/sys read-only.
    [ "$(cat /proc/sys/net/ipv4/ip_forward)" = 1 ] || sysctl -qw net.ipv4.ip_forward=1
    # The rules go in as one iptables-restore transaction per table, so the host never runs with a
    # partial firewall: --noflush keeps every other chain, each chain declared below is emptied and
    # refilled in the same commit, and the jump into it is moved to the top of its chain there too.
    {
        echo '*filter'
        rules_filter
        jump INPUT JIJI-INPUT
        jump FORWARD JIJI-FORWARD
        echo COMMIT
        echo '*nat'
        rules_nat
        jump POSTROUTING JIJI-POSTROUTING nat
        echo COMMIT
    } | iptables-restore -w --noflush
    # Access peers off: a chain left from when they were on goes.
    access_chain_gone
    ;;
down)
    remove_rules
    ;;
*)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
__JIJI_EOF__
    put_file "$UNIT" 644 <<'__JIJI_EOF__'
# Managed by jiji-net: changes here are overwritten by the next `pulumi up`.
[Unit]
Description=jiji-net: container network, forwarding and firewall
After=network-pre.target
Before=wg-quick@jiji0.service
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/lib/jiji-net/network.sh up
# No ExecStop: a restart would run it before `up` and leave the host without its firewall for a
# moment. The network step's remove runs `down` itself.

[Install]
WantedBy=multi-user.target
__JIJI_EOF__
    if changed "$UNIT"; then systemctl daemon-reload; fi
    docker_network
    docker_dns "$DOCKER_SAVED" 10.210.1.1
    if changed "$SCRIPT" "$UNIT" || ! chains_as_recorded; then unit_running jiji-net-network yes; else unit_running jiji-net-network no; fi
    for chain in JIJI-INPUT JIJI-FROM-MESH JIJI-FORWARD; do chain_record filter "$chain"; done
    chain_record nat JIJI-POSTROUTING
    jump_record filter INPUT JIJI-INPUT
    jump_record filter FORWARD JIJI-FORWARD
    jump_record nat POSTROUTING JIJI-POSTROUTING
    printf '%s\n' "$ENGINE" > "$ENGINE_RECORD"
}
remove() {
    unit_gone jiji-net-network
    if [ -x "$SCRIPT" ]; then "$SCRIPT" down; fi
    rm -f "$UNIT" "$SCRIPT"
    systemctl daemon-reload
    engine_gone "$ENGINE"
    rm -f "$ENGINE_RECORD"
    if [ -e "$FORWARD_SAVED" ]; then
        before=$(cat "$FORWARD_SAVED")
        [ "$(cat /proc/sys/net/ipv4/ip_forward)" = "$before" ] || sysctl -qw net.ipv4.ip_forward="$before"
        rm -f "$FORWARD_SAVED"
    fi
}
main "$@" </dev/null
