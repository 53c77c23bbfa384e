# Managed by jiji-net: the wireguard step of web1-wireguard, run as `sh -s -- apply|remove`.
set -eu
STEP=wireguard
# shellcheck disable=SC2034 # read by the library's main
OWNER=web1-wireguard
LIB=/var/lib/jiji-net/staging/steplib.1111111111111111
if [ ! -r "$LIB" ]; then
    printf 'jiji-net: %s: %s: %s is missing; upload it again (pulumi up --replace on the staged-upload of this server, see pulumi stack --show-urns), then run pulumi up\n' "$(hostname)" "$STEP" "$LIB" >&2
    exit 1
fi
# shellcheck source=/dev/null
. "$LIB"
# shellcheck disable=SC2034 # read by the library's main
STAMP=$STATE/steps/$STEP
CONF=/etc/wireguard/jiji0.conf
INTERFACE=jiji0
TABLE=$STAGING/mesh.tsv
TABLE_COPY=$STATE/mesh.tsv
KEY=/etc/wireguard/jiji0.key
apply() {
    table=$(from_upload "$TABLE" 2222222222222222222222222222222222222222222222222222222222222222 "$TABLE_COPY")
    [ "$table" = "$TABLE_COPY" ] || put_file "$TABLE_COPY" 644 < "$table"
    put_file "$STATE/jiji0.interface" 600 <<'__JIJI_EOF__'
# Managed by jiji-net: changes here are overwritten by the next `pulumi up`.
# No private key in this file: it stays in /etc/wireguard/jiji0.key on this server and is set by PostUp.
# The [Peer] sections come from the mesh table the program uploads (see the wireguard step).
[Interface]
Address = 10.210.1.1/32
ListenPort = 51820
MTU = 1420
PostUp = wg set %i private-key /etc/wireguard/jiji0.key
__JIJI_EOF__
    (umask 077; { cat "$STATE/jiji0.interface"; wireguard_peers web1 10.0.1.0/24 25 "$TABLE_COPY"; } > "$CONF.render")
    put_file "$CONF" 600 < "$CONF.render"
    rm -f "$CONF.render"
    if ! ip link show "$INTERFACE" >/dev/null 2>&1; then
        unit_running "wg-quick@$INTERFACE" yes
    elif changed "$STATE/jiji0.interface"; then
        unit_running "wg-quick@$INTERFACE" yes
    elif changed "$CONF" || [ "$(wg show "$INTERFACE" public-key)" != "$(wg pubkey < "$KEY")" ]; then
        wireguard_sync "$INTERFACE" "$KEY" ''
        unit_running "wg-quick@$INTERFACE" no
    else
        unit_running "wg-quick@$INTERFACE" no
    fi
}
remove() {
    unit_gone "wg-quick@$INTERFACE"
    ip link del "$INTERFACE" 2>/dev/null || true
    rm -f "$CONF" "$TABLE_COPY" "$STATE/jiji0.interface"
}
main "$@" </dev/null
