# Managed by jiji-net: the host step of web1-host, run as `sh -s -- apply|remove`.
set -eu
STEP=host
OWNER=web1-host
STATE=/var/lib/jiji-net
# shellcheck disable=SC2034 # not every step stages uploads
STAGING=$STATE/staging
say() { printf 'jiji-net: %s: %s: %s\n' "$(hostname)" "$STEP" "$*" >&2; }
fail() { say "$*"; exit 1; }
claim() {
    mkdir -p "$STATE/steps"
    printf '%s\n' "$OWNER" > "$STAMP.new"
    mv -f "$STAMP.new" "$STAMP"
}
main() {
    case "${1:-}" in
    apply)
        if [ "$(id -u)" != 0 ]; then
            fail "connected as $(id -un); the steps change system files, so connect as root (servers[].user)"
        fi
        if command -v preflight >/dev/null 2>&1; then preflight; fi
        [ -z "$STAMP" ] || claim
        if [ -n "$STAMP" ] && command -v ledger_begin >/dev/null 2>&1; then ledger_begin; fi
        apply
        if [ -n "${LEDGER:-}" ]; then ledger_commit; fi
        ;;
    remove)
        if [ -z "$STAMP" ]; then
            remove
        elif [ "$(cat "$STAMP" 2>/dev/null || true)" = "$OWNER" ]; then
            remove
            rm -f "$STAMP"
            if command -v ledger_drop >/dev/null 2>&1; then ledger_drop; fi
        else
            say "left as it is: it belongs to $(cat "$STAMP" 2>/dev/null || echo 'no resource') now, not to $OWNER"
        fi
        ;;
    *)
        fail "usage: sh -s -- apply|remove"
        ;;
    esac
}
STAMP=$STATE/steps/$STEP
KEY=/etc/wireguard/jiji0.key
OWN_DIRS='/etc/jiji/corrosion/schemas /etc/jiji/corrosion /etc/jiji /usr/local/lib/jiji-net /var/lib/jiji-net/staging /var/lib/jiji-net/steps /var/lib/jiji-net/ledgers /var/lib/jiji-net/kept /var/lib/jiji-net /var/lib/jiji'
ENGINE=podman
BRIDGE=jiji-br0
ENGINE_RECORD=$STATE/network-engine
DOCKER_SAVED=$STATE/docker-daemon.before.json
FORWARD_SAVED=$STATE/ip_forward.before
PODMAN_DROP_IN=/etc/containers/containers.conf.d/50-jiji-net.conf
previous_engine() {
    if [ -f "$ENGINE_RECORD" ]; then cat "$ENGINE_RECORD"
    elif [ -e "$DOCKER_SAVED" ]; then echo docker
    elif [ -e "$PODMAN_DROP_IN" ]; then echo podman
    elif [ -e "$FORWARD_SAVED" ] && ip link show "$1" >/dev/null 2>&1; then echo none
    fi
}
engine_idle() {
    case "$1" in
    docker) command -v docker >/dev/null 2>&1 || return 0
        [ -z "$(docker ps -aq --filter network=jiji 2>/dev/null)" ] ;;
    podman) command -v podman >/dev/null 2>&1 || return 0
        [ -z "$(podman ps -aq --filter network=jiji 2>/dev/null)" ] ;;
    *) return 0 ;;
    esac
}
refuse_busy_switch() {
    previous=$(previous_engine "$2")
    if [ -n "$previous" ] && [ "$previous" != "$1" ] && ! engine_idle "$previous"; then
        fail "container_engine changes from $previous to $1, but $previous still has containers on its network jiji ($previous ps -a --filter network=jiji); stop and remove them, then run pulumi up again (nothing was changed on any server)"
    fi
}
preflight() {
    missing=""
    for tool in wg wg-quick ip iptables python3 systemctl sha256sum timeout awk podman; do
        command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
    done
    if ip link add jiji-probe0 type wireguard 2>/dev/null; then
        ip link del jiji-probe0
    elif ! command -v wireguard-go >/dev/null 2>&1; then
        missing="$missing wireguard(kernel-module-or-wireguard-go)"
    fi
    if [ -n "$missing" ]; then
        fail "lacks:$missing. Install them (Debian: apt-get install wireguard-tools iproute2 iptables python3 coreutils), then run pulumi up again"
    fi
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || fail "python3 is older than 3.11; jiji-dns needs 3.11 or later"
    if command -v sshd >/dev/null 2>&1 && sshd -T >/dev/null 2>&1; then
        sftp=$(sshd -T 2>/dev/null | awk 'tolower($1) == "subsystem" && $2 == "sftp" {print $3; exit}')
        if [ -z "$sftp" ]; then
            fail "sshd offers no sftp subsystem, which uploads need; add 'Subsystem sftp internal-sftp' to /etc/ssh/sshd_config and reload sshd"
        elif [ "$sftp" != internal-sftp ] && [ ! -x "$sftp" ]; then
            fail "sshd's sftp subsystem $sftp is not installed (Debian: apt-get install openssh-sftp-server)"
        fi
    fi
    refuse_busy_switch "$ENGINE" "$BRIDGE"
}
apply() {
    mkdir -p "$STAGING"
    (
        umask 077
        mkdir -p "$(dirname "$KEY")"
        if [ ! -s "$KEY" ]; then
            wg genkey > "$KEY.new"
            mv -f "$KEY.new" "$KEY"
        fi
    )
    wg pubkey < "$KEY"
}
remove() {
    rm -f "$KEY" "$STAMP"
    others=""
    for stamp in "$STATE"/steps/*; do
        [ ! -e "$stamp" ] || others=yes
    done
    for file in "$STAGING"/*; do
        case "$file" in "$STAGING"/steplib.*) [ -z "$others" ] || continue ;; esac
        rm -f "$file"
    done
    for dir in $OWN_DIRS; do
        rmdir "$dir" 2>/dev/null || true
    done
}
main "$@" </dev/null
