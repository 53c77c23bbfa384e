#!/usr/bin/env bash
# Installs what jiji-net needs on this machine, idempotently, caching heavy builds by version:
#   packages   Debian packages the lab, the tests and the benchmarks use
#   venv       the project's Python virtualenv (.venv) from pyproject.toml
#   corrosion  a Corrosion-compatible node (crates.io `klukai`, binary `corrosion`) for the lab
#   pulumi-cli the Pulumi CLI (deployments run it through the Automation API, so it needs no
#              language host; the command provider is the official plugin where installed, else
#              ours, command_provider/: see deploy/toolchain.py)
# With no argument it does all of them, in that order; several parts may be named.
set -euo pipefail
. "$(dirname "$0")/common.sh"

DEB_PACKAGES=(
    debootstrap systemd-container iproute2 iptables wireguard-tools wireguard-go openssh-client
    dnsutils dnsperf dnsmasq-base python3-venv shellcheck openssh-server
)

install_packages() {
    local missing=()
    for p in "${DEB_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        step "packages: all present"
    else
        need_root apt-get
        step "packages: installing ${missing[*]}"
        apt-get update -q >/dev/null || die "apt-get update failed" "check the Debian package sources in /etc/apt"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed" "run it by hand to see the error"
    fi
    install_prometheus
}

# For promtool, which checks and unit-tests monitoring/ (tests/test_alert_rules.py); the server is
# never run here. Without recommends: they pull in prometheus-node-exporter. Where systemd is PID 1
# the package's postinst enables and starts prometheus.service, undone at once below; elsewhere it
# starts the init script through invoke-rc.d, which refuses (exit 101) when no runlevel can be told,
# as in containers and chroots.
install_prometheus() {
    if dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -q 'ok installed'; then
        step "packages: prometheus present (promtool $(promtool --version 2>&1 | awk 'NR == 1 {print $3}'))"; return
    fi
    need_root apt-get
    step "packages: installing prometheus (for promtool; without recommends, its server left stopped)"
    apt-get update -q >/dev/null || die "apt-get update failed" "check the Debian package sources in /etc/apt"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null \
        || die "apt-get install prometheus failed" "run it by hand to see the error"
    if [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus >/dev/null 2>&1 \
            || die "systemctl disable --now prometheus failed" "run it by hand: the package's server must not run here"
    fi
}

install_venv() {
    local venv=$REPO_DIR/.venv stamp
    stamp=$(sha256sum "$REPO_DIR/pyproject.toml" | cut -c1-16)
    if [ -f "$venv/.stamp" ] && [ "$(cat "$venv/.stamp")" = "$stamp" ]; then
        step "venv: up to date ($venv)"; return
    fi
    step "venv: installing the project and its dev dependencies into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -e "$REPO_DIR[dev]" || die "pip install failed" "see the pip output above"
    echo "$stamp" >"$venv/.stamp"
}

corrosion_bin() { echo "$JIJI_CACHE/corrosion/klukai-$KLUKAI_VERSION/bin/corrosion"; }

install_corrosion() {
    local root bin
    bin=$(corrosion_bin); root=$(dirname "$(dirname "$bin")")
    if [ -x "$bin" ]; then step "corrosion: cached ($bin)"; return; fi
    need_cmd cargo "install Rust (rustup) to build the lab's Corrosion node"
    step "corrosion: building klukai $KLUKAI_VERSION from crates.io (one time, ~15 min on 2 cores)"
    mkdir -p "$root"
    local t0=$SECONDS
    # klukai reads tokio's runtime metrics, which exist only with --cfg tokio_unstable (upstream
    # sets it in its .cargo/config.toml, which the published crate does not carry).
    CARGO_TARGET_DIR="$JIJI_CACHE/corrosion/target" RUSTFLAGS="--cfg tokio_unstable" \
        cargo install --locked --root "$root" --version "$KLUKAI_VERSION" klukai \
        || die "building klukai $KLUKAI_VERSION failed" "see the cargo output above"
    rm -rf "$JIJI_CACHE/corrosion/target"
    note "built in $((SECONDS - t0)) s: $("$bin" --version)"
}

pulumi_dir() { echo "$JIJI_CACHE/pulumi/v$PULUMI_VERSION"; }

# The Go module proxy serves github.com/pulumi/pulumi/{pkg,sdk}/v3 at tagged releases, so the CLI
# builds from a wrapper module (the module's own go.mod has replace lines `go install` refuses).
build_pulumi_cli() {
    local out=$1 work
    need_cmd go "install Go to build the Pulumi CLI"
    work=$(mktemp -d)
    cat >"$work/go.mod" <<GOMOD
module jiji-net/pulumi-build

go 1.26

require (
	github.com/pulumi/pulumi/pkg/v3 v$PULUMI_VERSION
	github.com/pulumi/pulumi/sdk/v3 v$PULUMI_VERSION
)
GOMOD
    printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"\n' >"$work/tools.go"
    (cd "$work" && go mod tidy >/dev/null 2>&1) || die "resolving pulumi v$PULUMI_VERSION from the Go module proxy failed" "check that the Go module proxy serves github.com/pulumi/pulumi/pkg/v3@v$PULUMI_VERSION"
    (cd "$work" && CGO_ENABLED=0 go build -trimpath -o "$out/pulumi" \
        -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_VERSION" \
        github.com/pulumi/pulumi/pkg/v3/cmd/pulumi) || die "building the Pulumi CLI failed" "see the go output above"
    rm -rf "$work"
}

install_pulumi_cli() {
    local dir
    if command -v pulumi >/dev/null 2>&1 && [ -z "${JIJI_BUILD_PULUMI:-}" ]; then
        step "pulumi: using the installed CLI ($(command -v pulumi), $(pulumi version))"; return
    fi
    dir=$(pulumi_dir)
    if [ -x "$dir/bin/pulumi" ]; then
        step "pulumi: CLI cached ($dir/bin/pulumi)"; return
    fi
    step "pulumi: building the CLI v$PULUMI_VERSION from the Go module proxy (one time, about 5 min on 2 cores)"
    mkdir -p "$dir/bin"
    local t0=$SECONDS
    build_pulumi_cli "$dir/bin"
    note "built in $((SECONDS - t0)) s: $("$dir/bin/pulumi" version)"
}

[ $# -gt 0 ] || set -- all
for part in "$@"; do
    case "$part" in
        packages) install_packages ;;
        venv) install_venv ;;
        corrosion) install_corrosion ;;
        pulumi-cli) install_pulumi_cli ;;
        all) install_packages; install_venv; install_corrosion; install_pulumi_cli ;;
        *) die "unknown part '$part'" "use any of: packages venv corrosion pulumi-cli all" ;;
    esac
done
