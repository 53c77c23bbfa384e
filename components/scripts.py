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
