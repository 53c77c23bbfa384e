# Shared by the lab scripts: where the cache lives, how progress and failures are printed.
# shellcheck shell=bash
LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$LAB_DIR")
# shellcheck source=lab/versions.env
. "$LAB_DIR/versions.env"
# Heavy one-time builds live outside the repo so a fresh clone reuses them.
JIJI_CACHE=${JIJI_CACHE:-/var/cache/jiji-net}
# Per-checkout state (lab hosts, Pulumi backend) lives in an ignored directory of the checkout.
JIJI_STATE=${JIJI_STATE:-$REPO_DIR/.lab}

step() { printf '==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$1" >&2
    [ $# -gt 1 ] && printf '  fix: %s\n' "$2" >&2
    exit 1
}
need_root() { [ "$(id -u)" = 0 ] || die "this step must run as root (it uses $1)" "run it with sudo"; }
need_cmd() { command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed" "$2"; }
