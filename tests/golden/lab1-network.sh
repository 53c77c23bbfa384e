#!/bin/sh
# Managed by jiji-net: changes here are overwritten by the next `pulumi up`.
# Container network of this server: forwarding, the jiji-br0 bridge, NAT for traffic
# leaving the mesh, and the firewall of the mesh. `up` is idempotent (chains are flushed and
# refilled); `down` removes the rules `up` made (the bridge stays, so a restart detaches no container).
set -eu
SUBNET=10.210.1.0/24
CLUSTER=10.210.0.0/16
MESH=10.210.1.1
BRIDGE=jiji-br0
# Other servers' mesh addresses are the first host of their subnets: this mask picks the host part.
HOST_PART=0.0.0.1/0.0.0.255

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
}

case "${1:-}" in
up)
    # Written only when off: some container hosts keep /proc/sys read-only.
    [ "$(cat /proc/sys/net/ipv4/ip_forward)" = 1 ] || sysctl -qw net.ipv4.ip_forward=1
    ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
    ip link set "$BRIDGE" mtu 1420
    ip addr replace "$MESH/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    remove_rules
    # Traffic to this host. ACCEPT for what the mesh needs (so a host whose INPUT policy is DROP
    # works), DROP for what must not reach it, RETURN (the host's own rules) for everything else.
    iptables -w -N JIJI-INPUT
    iptables -w -A JIJI-INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    iptables -w -A JIJI-INPUT -p udp --dport 51820 -j ACCEPT
    for proto in tcp udp; do
        iptables -w -A JIJI-INPUT -i lo -p "$proto" -m multiport --dports 53,9280,9220 -j ACCEPT
    done
    # Over jiji0, WireGuard vouches for the source subnet; a source that is a mesh address is another server.
    iptables -w -N JIJI-FROM-MESH
    iptables -w -A JIJI-FROM-MESH -s "$HOST_PART" -j ACCEPT
    for proto in tcp udp; do
        iptables -w -A JIJI-FROM-MESH -p "$proto" -d "$MESH" --dport 53 -j ACCEPT
    done
    iptables -w -A JIJI-FROM-MESH -p icmp -j ACCEPT
    iptables -w -A JIJI-FROM-MESH -j DROP
    iptables -w -A JIJI-INPUT -i jiji0 -s "$CLUSTER" -j JIJI-FROM-MESH
    iptables -w -A JIJI-INPUT -i jiji0 -j DROP
    # Containers here: DNS and ping on the gateway; nothing else of the host.
    for proto in tcp udp; do
        iptables -w -A JIJI-INPUT -i "$BRIDGE" -p "$proto" -d "$MESH" --dport 53 -j ACCEPT
    done
    iptables -w -A JIJI-INPUT -i "$BRIDGE" -p icmp -j ACCEPT
    iptables -w -A JIJI-INPUT -i "$BRIDGE" -j DROP
    # From anywhere else (the underlay), the mesh's own services are not there.
    for proto in tcp udp; do
        iptables -w -A JIJI-INPUT -d "$MESH" -p "$proto" -m multiport --dports 53,9280 -j DROP
    done
    iptables -w -I INPUT 1 -j JIJI-INPUT
    # Forwarding: containers here and on other servers reach each other with their own addresses;
    # nobody else gets into the container subnet, and no container may pose as this host.
    iptables -w -N JIJI-FORWARD
    iptables -w -A JIJI-FORWARD -i "$BRIDGE" -s "$MESH" -j DROP
    iptables -w -A JIJI-FORWARD -i "$BRIDGE" ! -s "$SUBNET" -j DROP
    iptables -w -A JIJI-FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    iptables -w -A JIJI-FORWARD -i "$BRIDGE" -o jiji0 -d "$CLUSTER" -j ACCEPT
    iptables -w -A JIJI-FORWARD -i jiji0 -s "$CLUSTER" -o "$BRIDGE" -d "$SUBNET" -j ACCEPT
    iptables -w -A JIJI-FORWARD -o "$BRIDGE" -d "$SUBNET" -j DROP
    iptables -w -A JIJI-FORWARD -i "$BRIDGE" ! -d "$CLUSTER" -j ACCEPT
    iptables -w -I FORWARD 1 -j JIJI-FORWARD
    # NAT only for traffic leaving the mesh. ACCEPT ends the nat chain, so an engine's own
    # MASQUERADE further down never rewrites mesh-bound packets.
    iptables -w -t nat -N JIJI-POSTROUTING
    iptables -w -t nat -A JIJI-POSTROUTING -s "$SUBNET" -d "$CLUSTER" -j ACCEPT
    iptables -w -t nat -A JIJI-POSTROUTING -s "$SUBNET" ! -o "$BRIDGE" -j MASQUERADE
    iptables -w -t nat -I POSTROUTING 1 -j JIJI-POSTROUTING
    ;;
down)
    remove_rules
    ;;
*)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
