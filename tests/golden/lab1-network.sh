#!/bin/sh
# Managed by jiji-net: changes here are overwritten by the next `pulumi up`.
# Container network of this server: forwarding, the jiji-br0 bridge, NAT for traffic
# leaving the mesh, and the firewall of the mesh. `up` is idempotent (chains are emptied and
# refilled in one transaction); `down` removes the rules `up` made (the bridge stays, so a restart detaches no container).
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
    ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
    ip link set "$BRIDGE" mtu 1420
    ip addr replace "$MESH/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
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
