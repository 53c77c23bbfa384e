# Managed by jiji-net: the library its steps source (uploaded to each server by content hash,
# so state keeps its hash; the steps set STEP, OWNER and STAMP, then source it).
# The part of the step library every step needs: messages, the stamp, and `main`. The host step,
# which runs before anything is uploaded, has it inline; the other steps source the whole library.
STATE=/var/lib/jiji-net
# shellcheck disable=SC2034 # not every step stages uploads
STAGING=$STATE/staging

say() { printf 'jiji-net: %s: %s: %s\n' "$(hostname)" "$STEP" "$*" >&2; }
fail() { say "$*"; exit 1; }

# A step's remove acts only while the stamp names its own resource: when a replacement or a
# renamed server's new resource applied the same step since, the old resource leaves it alone.
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
        # A step's own checks come before its stamp: a refused server is left untouched.
        if command -v preflight >/dev/null 2>&1; then preflight; fi
        [ -z "$STAMP" ] || claim
        # A stamped step that sources the library keeps a ledger of what it installs.
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
# The paths put_file and install_staged replaced in this run.
CHANGED=""

# The ledger of a step: what its last successful apply installed, one line each, read by
# `jiji-net ready` and `jiji-net repair` (hostbin/jiji_ops/drift.py):
#   owner RESOURCE                   the step's Pulumi resource
#   file PATH MODE SHA256 [SOURCE]   SOURCE: the upload it was installed from; else a kept copy
#   unit NAME                        enabled and running
#   chain TABLE NAME SHA256          of `iptables -w -t TABLE -S NAME`, kept like a file
#   jump TABLE FROM TO
# A run writes it beside the last one and moves it over that one when apply ends well, so a failed
# run leaves the ledger of the last good one. What put_file writes (never a secret: the WireGuard
# key has its own file) is kept by content hash in KEPT, root's only, for repair without Pulumi.
LEDGER=""
LEDGERS=/var/lib/jiji-net/ledgers
KEPT=/var/lib/jiji-net/kept

ledger_begin() {
    mkdir -p "$LEDGERS"
    LEDGER=$LEDGERS/$STEP
    printf 'owner %s\n' "$OWNER" > "$LEDGER.new"
}

ledger_add() {
    [ -z "$LEDGER" ] || printf '%s\n' "$*" >> "$LEDGER.new"
}

sha_of() { sha256sum < "$1" | cut -d ' ' -f 1; }

# keep FILE SHA256: FILE's content in KEPT under its hash.
keep() {
    has_sha "$KEPT/$2" "$2" && return 0
    (
        umask 077
        mkdir -p "$KEPT"
        cp "$1" "$KEPT/$2.new"
        chmod 600 "$KEPT/$2.new"
        mv -f "$KEPT/$2.new" "$KEPT/$2"
    )
}

ledger_commit() {
    while read -r kind a b c upload; do
        # An upload gone by the end of the run (a binary taken out of a release archive) is no source.
        if [ "$kind" = file ] && [ -n "$upload" ] && [ ! -f "$upload" ]; then upload=""; fi
        printf '%s\n' "$kind $a${b:+ $b}${c:+ $c}${upload:+ $upload}"
    done < "$LEDGER.new" > "$LEDGER.commit"
    rm -f "$LEDGER.new"
    mv -f "$LEDGER.commit" "$LEDGER"
    kept_tidy
}

ledger_drop() {
    rm -f "$LEDGERS/$STEP" "$LEDGERS/$STEP.new" "$LEDGERS/$STEP.commit"
    kept_tidy
}

# Copies no ledger names any more go.
kept_tidy() {
    [ -d "$KEPT" ] || return 0
    named=$(for ledger in "$LEDGERS"/*; do
        case "$ledger" in *.new | *.commit) continue ;; esac
        [ ! -f "$ledger" ] || awk '$1 == "file" || $1 == "chain" { print $4 }' "$ledger"
    done)
    for copy in "$KEPT"/*; do
        [ -e "$copy" ] || continue
        printf '%s\n' "$named" | grep -qx "${copy##*/}" || rm -f "$copy"
    done
}

# chain_record TABLE CHAIN: the chain as the kernel prints it back, into the ledger.
chain_record() {
    if ! iptables -w -t "$1" -S "$2" > "$STATE/chain.jiji-new" </dev/null; then
        rm -f "$STATE/chain.jiji-new"
        fail "firewall chain $2 ($1) is not there after jiji-net-network ran"
    fi
    sha=$(sha_of "$STATE/chain.jiji-new")
    keep "$STATE/chain.jiji-new" "$sha"
    rm -f "$STATE/chain.jiji-new"
    ledger_add "chain $1 $2 $sha"
}

# jump_record TABLE FROM TO
jump_record() {
    iptables -w -t "$1" -C "$2" -j "$3" </dev/null 2>/dev/null || fail "no jump from $2 to $3 ($1) after jiji-net-network ran"
    ledger_add "jump $1 $2 $3"
}

# chains_as_recorded: true when the last good run recorded chains and they and their jumps are
# still as it recorded them.
chains_as_recorded() {
    grep -qs '^chain ' "$LEDGERS/$STEP" || return 1
    while read -r kind table name sha; do
        case "$kind" in
        chain) [ "$(iptables -w -t "$table" -S "$name" </dev/null 2>/dev/null | sha256sum | cut -d ' ' -f 1)" = "$sha" ] || return 1 ;;
        jump) iptables -w -t "$table" -C "$name" -j "$sha" </dev/null 2>/dev/null || return 1 ;;
        esac
    done < "$LEDGERS/$STEP"
}

# put_file PATH MODE, content on stdin: replaces PATH only when content or mode differ, so a run
# with the same content touches nothing; changed paths are collected in CHANGED.
put_file() {
    mkdir -p "$(dirname "$1")"
    cat > "$1.jiji-new"
    chmod "$2" "$1.jiji-new"
    if [ -n "$LEDGER" ]; then
        sha=$(sha_of "$1.jiji-new")
        keep "$1.jiji-new" "$sha"
        ledger_add "file $1 $2 $sha"
    fi
    if [ -f "$1" ] && cmp -s "$1.jiji-new" "$1" && [ "$(stat -c %a "$1")" = "$2" ]; then
        rm -f "$1.jiji-new"
    else
        mv -f "$1.jiji-new" "$1"
        CHANGED="$CHANGED $1"
    fi
}

# changed PATH...: true when this run replaced any of them.
changed() {
    for path in "$@"; do
        case " $CHANGED " in *" $path "*) return 0 ;; esac
    done
    return 1
}

has_sha() { printf '%s  %s\n' "$2" "$1" | sha256sum -c --quiet - >/dev/null 2>&1; }

# from_upload STAGED SHA256 INSTALLED: prints a file with that content: the upload, or the copy
# a run before installed (uploads belong to the host step, so a replaced step finds its copy).
from_upload() {
    if has_sha "$1" "$2"; then
        printf '%s\n' "$1"
    elif [ -n "$3" ] && has_sha "$3" "$2"; then
        printf '%s\n' "$3"
    else
        fail "$1 is missing or does not have SHA-256 $2 (a damaged or interrupted upload); run pulumi up again, or pulumi up --replace the server's upload resource (pulumi stack --show-urns)"
    fi
}

# install_staged FILE FINAL: copies an upload into place (a rename, safe while the old binary runs).
# Uploads are big: the ledger names FILE as the source to restore from, not a copy.
install_staged() {
    if [ -n "$LEDGER" ]; then
        upload=$1
        [ "$upload" != "$2" ] || upload=""
        ledger_add "file $2 755 $(sha_of "$1")${upload:+ $upload}"
    fi
    if [ -f "$2" ] && cmp -s "$1" "$2"; then return 0; fi
    mkdir -p "$(dirname "$2")"
    cp "$1" "$2.jiji-new"
    chmod 755 "$2.jiji-new"
    mv -f "$2.jiji-new" "$2"
    CHANGED="$CHANGED $2"
}

# unit_running UNIT RESTART(yes|no): enabled and active; restarted only when RESTART is yes.
unit_running() {
    systemctl enable --quiet "$1" 2>/dev/null || systemctl enable "$1"
    if [ "$2" = yes ] || ! systemctl is-active --quiet "$1"; then
        if ! systemctl restart "$1" || ! systemctl is-active --quiet "$1"; then
            journalctl -u "$1" -n 20 --no-pager >&2 || true
            fail "$1 did not start (its log is above)"
        fi
    fi
    ledger_add "unit $1"
}

# unit_gone UNIT: stopped and disabled, with no failed record left (systemctl --failed, and
# monitoring built on it, would list a removed unit until the next boot). A stop that hangs (seen
# in a container host whose cgroups systemd cannot kill) is cut short and the unit killed, so a
# remove never eats its step's timeout.
unit_gone() {
    if ! timeout 20 systemctl disable --now --quiet "$1" 2>/dev/null; then
        systemctl kill --signal=KILL "$1" 2>/dev/null || true
        systemctl disable --quiet "$1" 2>/dev/null || true
    fi
    systemctl reset-failed "$1" 2>/dev/null || true
}


# The helpers of single steps: the same on every server, so they live here, not in the steps.

# helper COMMAND ARG...: what is more than shell, in the step helper uploaded beside this library
# (hostbin/jiji_step, where its tests reach it). Like the libraries, every version stays until the
# host step is removed. It runs as root, so its content is checked once per step run, as every
# upload's is.
STEP_HELPER=/var/lib/jiji-net/staging/steplib.eeeeeeeeeeeeeeee.pyz
HELPER_CHECKED=""
helper() {
    if [ -z "$HELPER_CHECKED" ]; then
        has_sha "$STEP_HELPER" eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee || fail "$STEP_HELPER is missing or does not have SHA-256 eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee (a damaged or interrupted upload); upload it again (pulumi up --replace on the staged-upload of this server, see pulumi stack --show-urns), then run pulumi up"
        HELPER_CHECKED=yes
    fi
    JIJI_STEP=$STEP python3 "$STEP_HELPER" "$@"
}

# download URL FILE SHA256: the pinned release, fetched once. A file there with other content (an
# interrupted fetch) is fetched again; a fetch that does not match is deleted before the step
# fails, so the next run starts clean instead of failing on it for good.
download() {
    helper download "$1" "$2" "$3" || exit 1
}

# The bootstrap list matters only when a node starts: a config that differs only there (a server
# joined or left) is written without a restart.
without_bootstrap() { grep -v '^bootstrap = ' "$1" 2>/dev/null || true; }

# api_answers HOST:PORT: true when Corrosion's API there answers a query.
api_answers() {
    helper api-answers "$1"
}

# wireguard_peers SELF NETWORK KEEPALIVE TABLE: the [Peer] sections of jiji0.conf for server SELF.
wireguard_peers() {
    awk -v self="$1" -v network="$2" -v keepalive="$3" '
# The [Peer] sections of jiji0.conf, from the mesh table (one server a line, tab-separated:
# name index subnet public_key endpoint private_network private_endpoint; "-" for none), for
# the server named `self` whose private network is `network`. A peer on the same private
# network is reached at its private address, any other at its endpoint.
BEGIN { FS = "\t" }
/^#/ || NF == 0 { next }
NF != 7 { printf "mesh table line %d has %d fields, not 7\n", NR, NF > "/dev/stderr"; bad = 1; exit 1 }
$1 == self { next }
{
    endpoint = $5
    if (network != "-" && $6 == network) endpoint = $7
    printf "\n# %s\n[Peer]\nPublicKey = %s\nAllowedIPs = %s\n", $1, $4, $3
    if (endpoint != "-") printf "Endpoint = %s\n", endpoint
    printf "PersistentKeepalive = %s\n", keepalive
}
END { if (bad) exit 1 }
' "$4"
}

# wireguard_sync INTERFACE KEYFILE [ACCESS_CIDR]: peers changed live with `wg syncconf`, which
# keeps handshakes; it is given the private key from the key file (a config without one would
# remove it), never on a command line. ACCESS_CIDR, when access peers are on, stays routed into
# the interface (jiji0.conf's PostUp made that route; the peers' own routes are below).
wireguard_sync() {
    live=$(mktemp /run/jiji0.sync.XXXXXX)
    trap 'rm -f "$live"' EXIT
    wg-quick strip "$1" | awk -v keyfile="$2" '
        { print }
        /^\[Interface\]/ { getline key < keyfile; print "PrivateKey = " key }
    ' > "$live"
    wg syncconf "$1" "$live"
    rm -f "$live"
    trap - EXIT
    # syncconf does not touch routes: one for each peer's subnet, none for peers that left.
    wanted=$(wg show "$1" allowed-ips | awk '{for (i = 2; i <= NF; i++) print $i}')
    for net in $wanted; do
        ip route replace "$net" dev "$1"
    done
    for net in $(ip -4 route show dev "$1" | awk '{print $1}'); do
        [ "$net" != "${3:-}" ] || continue
        printf '%s\n' "$wanted" | grep -qx "$net" || ip route del "$net" dev "$1"
    done
    if [ -n "${3:-}" ]; then ip route replace "$3" dev "$1"; fi
}

# docker_dns SAVED ADDRESS: `dns` in daemon.json set to ADDRESS, every other key kept; the file as
# found saved once in SAVED for docker_gone.
docker_dns() {
    mkdir -p "$STATE"
    result=$(helper docker-dns "$1" "$2") || exit 1
    # dockerd reads "dns" only when it starts.
    if [ "$result" = changed ]; then docker_restart restart; fi
}

# docker_restart restart|try-restart: docker.service allows 3 starts a minute; an engine switch
# back and forth in that time would hit the limit, and these restarts are ours.
docker_restart() {
    systemctl reset-failed docker 2>/dev/null || true
    systemctl "$1" docker
}

# docker_gone SAVED: the `jiji` network removed, daemon.json put back as docker_dns found it.
docker_gone() {
    docker network rm jiji >/dev/null 2>&1 || true
    result=$(helper docker-restore "$1") || exit 1
    # A docker that was not running is not started just to read the file it will read anyway.
    case "$result" in
    changed) docker_restart try-restart ;;
    changed-empty) say "/etc/docker/daemon.json is empty again, as found; dockerd cannot start with an empty file, so it was not restarted (it keeps the mesh's dns until its next start)" ;;
    esac
}

# podman_gone DROP_IN: the `jiji` network removed, and the DNS drop-in (with its directory, when
# the network step made it).
podman_gone() {
    podman network rm jiji >/dev/null 2>&1 || true
    rm -f "$1"
    if [ -e "$STATE/podman-drop-in-dir.made" ]; then
        rmdir "${1%/*}" 2>/dev/null || true
        rm -f "$STATE/podman-drop-in-dir.made"
    fi
}

# What the network step set up for a container engine, and whether a switch away from it is safe.
# The host step has this inline (it runs before anything is uploaded) and refuses a switch there,
# on every server before any network step runs anywhere; the network step has it from the library.
ENGINE_RECORD=$STATE/network-engine
DOCKER_SAVED=$STATE/docker-daemon.before.json
FORWARD_SAVED=$STATE/ip_forward.before
PODMAN_DROP_IN=/etc/containers/containers.conf.d/50-jiji-net.conf

# previous_engine BRIDGE: the engine the network step last set up (servers set up before the
# record was kept are read from the pieces it made).
previous_engine() {
    if [ -f "$ENGINE_RECORD" ]; then cat "$ENGINE_RECORD"
    elif [ -e "$DOCKER_SAVED" ]; then echo docker
    elif [ -e "$PODMAN_DROP_IN" ]; then echo podman
    elif [ -e "$FORWARD_SAVED" ] && ip link show "$1" >/dev/null 2>&1; then echo none
    fi
}

# engine_idle ENGINE: true when no container of ENGINE is on its `jiji` network (or it has none).
engine_idle() {
    case "$1" in
    docker) command -v docker >/dev/null 2>&1 || return 0
        [ -z "$(docker ps -aq --filter network=jiji 2>/dev/null)" ] ;;
    podman) command -v podman >/dev/null 2>&1 || return 0
        [ -z "$(podman ps -aq --filter network=jiji 2>/dev/null)" ] ;;
    *) return 0 ;;
    esac
}

# refuse_busy_switch ENGINE BRIDGE: a switch of engine is refused while containers still use the
# old engine's network: removing it would cut them off, and nothing here may stop someone's
# containers.
refuse_busy_switch() {
    previous=$(previous_engine "$2")
    if [ -n "$previous" ] && [ "$previous" != "$1" ] && ! engine_idle "$previous"; then
        fail "container_engine changes from $previous to $1, but $previous still has containers on its network jiji ($previous ps -a --filter network=jiji); stop and remove them, then run pulumi up again (nothing was changed on any server)"
    fi
}
