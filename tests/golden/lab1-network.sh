#!/bin/sh
# Managed by jiji-net: changes here are overwritten by the next `pulumi up`.
# Container network of this server: forwarding, the jiji-br0 bridge, NAT for traffic
# leaving the mesh, and a firewall that keeps Corrosion gossip and DNS on the mesh.
# `up` is idempotent (chains are flushed and refilled); `down` removes everything `up` made.
set -eu
SUBNET=10.210.1.0/24
CLUSTER=10.210.0.0/16
MESH=10.210.1.1

remove_rules() {
    iptables -w -D INPUT -j JIJI-INPUT 2>/dev/null || true
    iptables -w -D FORWARD -j JIJI-FORWARD 2>/dev/null || true
    iptables -w -t nat -D POSTROUTING -j JIJI-POSTROUTING 2>/dev/null || true
    for chain in JIJI-INPUT JIJI-FORWARD; do
        iptables -w -F $chain 2>/dev/null || true
        iptables -w -X $chain 2>/dev/null || true
    done
    iptables -w -t nat -F JIJI-POSTROUTING 2>/dev/null || true
    iptables -w -t nat -X JIJI-POSTROUTING 2>/dev/null || true
}

case "${1:-}" in
up)
    # Written only when off: some container hosts keep /proc/sys read-only.
    [ "$(cat /proc/sys/net/ipv4/ip_forward)" = 1 ] || sysctl -qw net.ipv4.ip_forward=1
    ip link show jiji-br0 >/dev/null 2>&1 || ip link add jiji-br0 type bridge
    ip link set jiji-br0 mtu 1420
    ip addr replace $MESH/24 dev jiji-br0
    ip link set jiji-br0 up
    remove_rules
    iptables -w -N JIJI-INPUT
    # WireGuard from anywhere; gossip and DNS on the mesh address only via jiji0, the containers, loopback.
    iptables -w -A JIJI-INPUT -p udp --dport 51820 -j ACCEPT
    for proto in tcp udp; do
        iptables -w -A JIJI-INPUT -i jiji0 -p $proto --dport 9280 -j RETURN
        iptables -w -A JIJI-INPUT -i jiji-br0 -p $proto --dport 9280 -j RETURN
        iptables -w -A JIJI-INPUT -i lo -p $proto --dport 9280 -j RETURN
        iptables -w -A JIJI-INPUT -d $MESH -p $proto --dport 9280 -j DROP
    done
    for proto in tcp udp; do
        iptables -w -A JIJI-INPUT -i jiji0 -p $proto --dport 53 -j RETURN
        iptables -w -A JIJI-INPUT -i jiji-br0 -p $proto --dport 53 -j RETURN
        iptables -w -A JIJI-INPUT -i lo -p $proto --dport 53 -j RETURN
        iptables -w -A JIJI-INPUT -d $MESH -p $proto --dport 53 -j DROP
    done
    iptables -w -I INPUT 1 -j JIJI-INPUT
    # Containers reach other servers' containers with their own source address.
    iptables -w -N JIJI-FORWARD
    iptables -w -A JIJI-FORWARD -s $SUBNET -d $CLUSTER -o jiji0 -j ACCEPT
    iptables -w -A JIJI-FORWARD -s $CLUSTER -d $SUBNET -i jiji0 -j ACCEPT
    iptables -w -I FORWARD 1 -j JIJI-FORWARD
    # NAT only for traffic leaving the mesh.
    iptables -w -t nat -N JIJI-POSTROUTING
    iptables -w -t nat -A JIJI-POSTROUTING -s $SUBNET -d $CLUSTER -j RETURN
    iptables -w -t nat -A JIJI-POSTROUTING -s $SUBNET ! -o jiji-br0 -j MASQUERADE
    iptables -w -t nat -I POSTROUTING 1 -j JIJI-POSTROUTING
    ;;
down)
    remove_rules
    ip link del jiji-br0 2>/dev/null || true
    ;;
*)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
