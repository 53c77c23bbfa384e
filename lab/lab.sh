#!/usr/bin/env bash
# The local lab: N booted Debian hosts (systemd-nspawn, each in its own network namespace) on an
# underlay in the RFC 2544 benchmarking range, plus an upstream DNS resolver serving a test zone.
#   lab/lab.sh up [N]     bring up N hosts (default 3), idempotent
#   lab/lab.sh down       remove everything the lab made: hosts, mounts, namespaces, links, files
#   lab/lab.sh status     what is running
#   lab/lab.sh ssh I CMD  run CMD on host I
#   lab/lab.sh stop I / start I   power host I off (its disk kept) / boot it again
#   lab/lab.sh reset I    host I as a new machine (its disk thrown away)
#   lab/lab.sh image I [podman|docker]  the local container image localhost/jiji-lab:1 in host I's engine
#   lab/lab.sh cut I [hosts|hosts:J,K|inbound|all]  drop host I's underlay traffic with the other
#                         hosts (hosts), with hosts J,K only, only what they send it (inbound: a
#                         one-way cut), or with everything, this machine's SSH included (all);
#                         heal I undoes it
#   lab/lab.sh stack-config FILE [ENGINE]  the lab stack's config with the hosts' SSH host keys pinned
#   lab/lab.sh demo       a labelled demo service on hosts 0 and 1, found by name from host 2
# Hosts reach each other and the resolver, nothing else (no default route, no NAT).
set -euo pipefail
. "$(dirname "$0")/common.sh"

LAB=$JIJI_STATE/lab
BRIDGE=jiji-lab0
UNDERLAY_PREFIX=198.18.0
ROOTFS_PACKAGES=systemd,systemd-sysv,dbus,openssh-server,wireguard-tools,wireguard-go,iproute2,iputils-ping,python3,dnsutils,ca-certificates,iptables,sqlite3,podman,netavark,aardvark-dns,crun,conmon,busybox-static,docker.io
ROOTFS=$JIJI_CACHE/rootfs/$DEBIAN_SUITE-$(printf '%s' "$ROOTFS_PACKAGES" | sha256sum | cut -c1-12)
KEY=$LAB/id_ed25519

host_ip() { echo "$UNDERLAY_PREFIX.$((10 + $1))"; }
host_ns() { echo "jiji-lab-h$1"; }
RESOLVER_NS=jiji-lab-dns
RESOLVER_IP=$UNDERLAY_PREFIX.2

debian_mirror() {
    # The machine's own Debian source, so the lab uses whatever mirror apt already uses.
    local uri
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$uri" ] || die "cannot find a Debian mirror in /etc/apt" "configure apt, or set JIJI_DEBIAN_MIRROR"
    echo "${JIJI_DEBIAN_MIRROR:-$uri}"
}

build_rootfs() {
    if [ -f "$ROOTFS/.complete" ]; then step "rootfs: cached ($ROOTFS)"; return; fi
    need_cmd debootstrap "run lab/toolchain.sh packages"
    step "rootfs: debootstrap $DEBIAN_SUITE into $ROOTFS (one time, ~2 min)"
    rm -rf "$ROOTFS.tmp"
    mkdir -p "$(dirname "$ROOTFS")"
    local t0=$SECONDS
    debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" "$DEBIAN_SUITE" "$ROOTFS.tmp" "$(debian_mirror)" \
        >"$ROOTFS.log" 2>&1 || die "debootstrap failed (log: $ROOTFS.log)" "check that Debian's packages are reachable"
    # Per-host identity is made at boot of each host; the shared image has none.
    rm -f "$ROOTFS.tmp/etc/machine-id" "$ROOTFS.tmp/var/lib/dbus/machine-id" "$ROOTFS.tmp"/etc/ssh/ssh_host_*
    : >"$ROOTFS.tmp/etc/machine-id"
    chroot "$ROOTFS.tmp" systemctl enable ssh >/dev/null 2>&1 || true
    # Docker is installed on every host but runs only where a test starts it.
    chroot "$ROOTFS.tmp" systemctl disable docker.service docker.socket containerd.service >/dev/null 2>&1 || true
    chroot "$ROOTFS.tmp" apt-get clean
    touch "$ROOTFS.tmp/.complete"
    mv "$ROOTFS.tmp" "$ROOTFS"
    note "built in $((SECONDS - t0)) s, $(du -sm "$ROOTFS" | cut -f1) MB"
}

check_prereqs() {
    need_root "network namespaces and systemd-nspawn"
    need_cmd systemd-nspawn "run lab/toolchain.sh packages (Debian package systemd-container)"
    need_cmd ip "run lab/toolchain.sh packages (iproute2)"
    need_cmd dnsmasq "run lab/toolchain.sh packages (dnsmasq-base)"
    grep -q overlay /proc/filesystems || modprobe overlay 2>/dev/null || die "no overlayfs in this kernel" "load the overlay module"
}

ensure_bridge() {
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        step "network: bridge $BRIDGE with $UNDERLAY_PREFIX.1/24"
        ip link add "$BRIDGE" type bridge
        ip addr add "$UNDERLAY_PREFIX.1/24" dev "$BRIDGE"
        ip link set "$BRIDGE" up
    fi
}

attach_ns() {
    # $1 namespace, $2 address, $3 root-side link name: a veth into the namespace, as eth0.
    local ns=$1 addr=$2 link=$3
    ip netns list | grep -qw "$ns" || ip netns add "$ns"
    if ! ip link show "$link" >/dev/null 2>&1; then
        ip link add "$link" type veth peer name eth0 netns "$ns"
        ip link set "$link" master "$BRIDGE" up
        ip -n "$ns" addr add "$addr/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    fi
}

start_resolver() {
    local pidfile=$LAB/resolver.pid
    # Alive, not a zombie: this machine's init may not reap a dnsmasq whose lab.sh has exited.
    if [ -f "$pidfile" ] && grep -qs '^State:[[:space:]]*[RSD]' "/proc/$(cat "$pidfile")/status"; then return; fi
    attach_ns "$RESOLVER_NS" "$RESOLVER_IP" jl-dns
    step "resolver: dnsmasq on $RESOLVER_IP:53 serving lab.test"
    cat >"$LAB/resolver.hosts" <<HOSTS
198.18.0.200 www.lab.test
198.18.0.201 api.lab.test
HOSTS
    ip netns exec "$RESOLVER_NS" dnsmasq --keep-in-foreground --no-resolv --no-hosts \
        --addn-hosts="$LAB/resolver.hosts" --local=/lab.test/ --listen-address="$RESOLVER_IP" \
        --bind-interfaces --pid-file= --user=root >"$LAB/resolver.log" 2>&1 &
    echo $! >"$pidfile"
}

# Podman inside an nspawn host: this machine's cgroup v1 hierarchies are read-only there (crun
# cannot make its cgroups), /proc/sys is read-only (crun cannot set podman's default
# ping_group_range) and the root is overlayfs (podman's overlay driver refuses it; vfs works).
# The files of a container image with busybox's HTTP server and wget, imported on first use by
# `image I` (no registry is reachable).
lab_podman() {
    local root=$1 applet
    mkdir -p "$root/etc/containers" "$root/opt/jiji-lab-image/bin" "$root/opt/jiji-lab-image/www"
    install -d -m 1777 "$root/opt/jiji-lab-image/tmp"
    printf '[containers]\ncgroups = "disabled"\ndefault_sysctls = []\n' >"$root/etc/containers/containers.conf"
    printf '[storage]\ndriver = "vfs"\nrunroot = "/run/containers/storage"\ngraphroot = "/var/lib/containers/storage"\n' \
        >"$root/etc/containers/storage.conf"
    cp "$root/bin/busybox" "$root/opt/jiji-lab-image/bin/busybox"
    # nc, usleep, date, ping and touch: the firewall test's load from inside a container.
    for applet in sh httpd wget nslookup cat echo sleep ls rm hostname nc usleep date ping touch; do
        ln -sf busybox "$root/opt/jiji-lab-image/bin/$applet"
    done
}

# Docker inside an nspawn host: runc cannot make cgroups on the read-only hierarchies, so the
# default runtime is crun with its cgroup manager disabled, as podman's is. It is given on
# dockerd's command line (Debian's unit reads DOCKER_OPTS from /etc/default/docker), so
# /etc/docker/daemon.json stays the user's, which is what the mesh edits. Its other need, a
# writable /proc/sys/net (crun sets net.ipv4.ip_unprivileged_port_start), is met by start_host.
lab_docker() {
    local root=$1
    printf '#!/bin/sh\nexec /usr/bin/crun --cgroup-manager=disabled "$@"\n' >"$root/usr/local/bin/crun-nocg"
    chmod 755 "$root/usr/local/bin/crun-nocg"
    printf 'DOCKER_OPTS="--add-runtime crun-nocg=/usr/local/bin/crun-nocg --default-runtime crun-nocg"\n' >"$root/etc/default/docker"
}

# image I [ENGINE]: the lab image localhost/jiji-lab:1 in host I's podman or docker (an HTTP
# server on 8080 serving /www; `wget -qO- http://127.0.0.1:8080/` is its health check).
lab_image() {
    local engine=${2:-podman}
    case "$engine" in podman | docker) ;; *) die "image: engine '$engine' is neither podman nor docker" "use podman or docker" ;; esac
    # docker import has no -q; its output (the image id) is dropped.
    lab_ssh "$1" "$engine image inspect localhost/jiji-lab:1 >/dev/null 2>&1 || { hostname >/opt/jiji-lab-image/www/index.html &&
        tar -C /opt/jiji-lab-image -c . | $engine import --change 'CMD [\"/bin/httpd\",\"-f\",\"-p\",\"8080\",\"-h\",\"/www\"]' - localhost/jiji-lab:1 >/dev/null; }"
}

# demo: a labelled service `web` of project `demo` (the lab image's HTTP server, health-checked)
# on hosts 0 and 1 of a mesh up with podman, and the commands to look at it.
DEMO_NAME=demo-web.jiji
demo() {
    local n i
    n=$(cat "$LAB/hosts")
    [ "$n" -ge 3 ] || die "the demo needs 3 hosts, the lab has $n" "run make up"
    for i in 0 1; do
        lab_image "$i"
        lab_ssh "$i" 'podman rm -f demo-web >/dev/null 2>&1; podman run -d --name demo-web --network jiji \
            --label jiji.project=demo --label jiji.service=web \
            --health-cmd "wget -qO- http://127.0.0.1:8080/" --health-interval 2s --health-retries 1 \
            localhost/jiji-lab:1 /bin/httpd -f -p 8080 -h /www >/dev/null' \
            || die "starting the demo service on host $i failed" "is the mesh up with container_engine: podman?"
    done
    lab_image 2
    step "demo: service web of project demo on lab0 and lab1, found by name as $DEMO_NAME"
    local t0=$SECONDS answer
    until answer=$(lab_ssh 2 "dig +short +time=1 +tries=1 @10.210.2.1 $DEMO_NAME" | sort | tr '\n' ' ') \
        && [ "$(wc -w <<<"$answer")" = 2 ]; do
        [ $((SECONDS - t0)) -lt 60 ] || die "lab2 did not answer $DEMO_NAME with both containers in 60 s (got: $answer)" \
            "look at 'journalctl -u jiji-registrar' on lab0 and lab1"
        sleep 1
    done
    note "lab2 answers $DEMO_NAME: $answer($((SECONDS - t0)) s)"
    cat <<EOF

The mesh is up. Look at it (from $REPO_DIR):
  python3 build/jiji-net.pyz --outputs .lab/outputs.json -i .lab/lab/id_ed25519 -H all status
  python3 build/jiji-net.pyz --outputs .lab/outputs.json -i .lab/lab/id_ed25519 -H all ready
  bash lab/lab.sh ssh 2 dig +short @10.210.2.1 $DEMO_NAME
  bash lab/lab.sh ssh 2 podman run --rm --network jiji localhost/jiji-lab:1 wget -qO- http://$DEMO_NAME:8080/
Preview a change: make preview      Take it all down: make lab-down
EOF
}

prepare_host() {
    local i=$1 dir=$LAB/h$1 root
    root=$dir/root
    mkdir -p "$dir/upper" "$dir/work" "$root"
    mountpoint -q "$root" || mount -t overlay overlay -o "lowerdir=$ROOTFS,upperdir=$dir/upper,workdir=$dir/work" "$root"
    if [ ! -s "$root/etc/machine-id" ]; then
        # A fresh identity per host: machine-id, SSH host keys, hostname, the lab's key.
        tr -d '-' </proc/sys/kernel/random/uuid >"$root/etc/machine-id"
        ssh-keygen -A -f "$root" >/dev/null
        echo "lab$i" >"$root/etc/hostname"
        install -d -m 700 "$root/root/.ssh"
        install -m 600 "$KEY.pub" "$root/root/.ssh/authorized_keys"
        printf 'nameserver %s\n' "$RESOLVER_IP" >"$root/etc/resolv.conf"
        lab_podman "$root"
        lab_docker "$root"
    fi
}

start_host() {
    local i=$1 dir=$LAB/h$1 ns
    ns=$(host_ns "$i")
    if [ -f "$dir/nspawn.pid" ] && kill -0 "$(cat "$dir/nspawn.pid")" 2>/dev/null; then
        note "host $i already running"; return
    fi
    attach_ns "$ns" "$(host_ip "$i")" "jl-h$i"
    # nspawn keeps /proc/sys read-only inside the host, so forwarding (which a mesh server
    # needs, and jiji-net turns on where it can) is set on its namespace from outside.
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
    prepare_host "$i"
    # Containers inside a host need every capability and the keyring/bpf syscalls; only a lab
    # brought up with JIJI_LAB_CONTAINERS=1 gets them (the mesh and fault tests run as before).
    local -a HOST_CAPS=(--capability=CAP_NET_ADMIN) VFS=()
    # Their runtimes also write sysctls of the host's own network namespace (docker's crun sets
    # net.ipv4.ip_unprivileged_port_start): /proc/sys/net writable, the rest of /proc/sys not.
    if [ -f "$LAB/containers" ]; then
        HOST_CAPS=(--capability=all --system-call-filter='@keyring bpf')
        VFS=(SYSTEMD_NSPAWN_API_VFS_WRITABLE=network)
    fi
    env "${VFS[@]}" systemd-nspawn --quiet --register=no --keep-unit --resolv-conf=off --timezone=off -D "$dir/root" -M "lab$i" \
        --network-namespace-path="/run/netns/$ns" "${HOST_CAPS[@]}" -b >"$dir/console.log" 2>&1 &
    echo $! >"$dir/nspawn.pid"
}

lab_ssh() {
    local i=$1; shift
    ssh -i "$KEY" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o LogLevel=ERROR -o ConnectTimeout=3 "root@$(host_ip "$i")" "$@"
}

# wait_ssh I: until host I answers SSH; false after 90 s, with the end of its console printed
# (CI keeps only what is printed).
wait_ssh() {
    local i=$1 t0=$SECONDS
    until lab_ssh "$i" true 2>/dev/null; do
        kill -0 "$(cat "$LAB/h$i/nspawn.pid")" 2>/dev/null \
            || die "host $i exited while booting (see $LAB/h$i/console.log)" "run lab/lab.sh down, then up again"
        if [ $((SECONDS - t0)) -ge 90 ]; then
            echo "--- host $i did not answer SSH within 90 s; the last lines of $LAB/h$i/console.log:" >&2
            tail -n 40 "$LAB/h$i/console.log" >&2 || true
            return 1
        fi
        sleep 1
    done
}

# ready_host I: host I answering SSH. A boot that hangs (seen once in CI: one host of three never
# answered, its console not kept) is printed and powered off, and the host boots once more.
ready_host() {
    local i=$1
    wait_ssh "$i" && return 0
    note "host $i: booting it again"
    stop_host "$i"
    start_host "$i"
    wait_ssh "$i" || die "host $i ($(host_ip "$i")) did not answer SSH within 90 s, twice" "see $LAB/h$i/console.log"
}

up() {
    local n=${1:-3}
    [ "$n" -ge 1 ] && [ "$n" -le 50 ] || die "host count '$n' out of range" "use 1-50"
    check_prereqs
    build_rootfs
    mkdir -p "$LAB"
    [ -f "$KEY" ] || { step "ssh: lab key $KEY"; ssh-keygen -q -t ed25519 -N '' -C jiji-lab -f "$KEY"; }
    ensure_bridge
    # The marker says what this `up` asked for, not what an earlier one left behind.
    if [ "${JIJI_LAB_CONTAINERS:-0}" = 1 ]; then : >"$LAB/containers"; else rm -f "$LAB/containers"; fi
    raise_inotify_instances "$n"
    start_resolver
    for ((i = 0; i < n; i++)); do step "host $i: booting at $(host_ip "$i")"; start_host "$i"; done
    for ((i = 0; i < n; i++)); do ready_host "$i"; note "host $i: ssh ready ($(lab_ssh "$i" 'systemctl is-system-running' 2>/dev/null || true))"; done
    echo "$n" >"$LAB/hosts"
    step "lab up: $n hosts; key $KEY"
}

# Every host's systemd, journald and wireguard-go take inotify instances from one per-user budget
# of this kernel (the hosts share root's uid; default 128). At 16 hosts it ran out and wireguard-go
# failed "listen on uapi socket: too many open files". Raised for the lab, put back by down.
raise_inotify_instances() {
    local want=$((64 * $1 + 128)) have
    have=$(sysctl -n fs.inotify.max_user_instances)
    [ "$have" -lt "$want" ] || return 0
    [ -f "$LAB/inotify.orig" ] || echo "$have" >"$LAB/inotify.orig"
    note "fs.inotify.max_user_instances $have -> $want for $1 hosts"
    sysctl -qw fs.inotify.max_user_instances="$want"
}

stop_host() {
    local i=$1 dir=$LAB/h$1 pid
    [ -f "$dir/nspawn.pid" ] || return 0
    pid=$(cat "$dir/nspawn.pid")
    if kill -0 "$pid" 2>/dev/null; then
        note "host $i: powering off"
        kill -TERM "$pid"   # nspawn asks the host's systemd to power off
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && { note "host $i: still up, killing"; kill -KILL "$pid"; sleep 1; }
    fi
    rm -f "$dir/nspawn.pid"
}

# Host I as a new machine: its disk (the overlay's upper layer) thrown away, booted again.
reset_host() {
    local i=$1 dir=$LAB/h$1
    stop_host "$i"
    mountpoint -q "$dir/root" && umount "$dir/root"
    rm -rf "$dir/upper" "$dir/work"
    # Its network too: links and addresses live in the namespace, which outlives the host.
    ip link del "jl-h$i" 2>/dev/null || true
    ip netns del "$(host_ns "$i")" 2>/dev/null || true
    start_host "$i"
    ready_host "$i"
}

# A cable pulled, in the host's own namespace but in the raw table and a chain of the lab's own,
# which nothing jiji-net manages touches; healing removes exactly that chain.
CUT_CHAIN=JIJI-LAB-CUT
cut_host() {
    # $2: hosts (both ways, every other host), hosts:J,K (both ways, those hosts only), inbound
    # (only what other hosts send to I is dropped: a one-way cut), all (everything, SSH included).
    local i=$1 scope=${2:-hosts} ns j peers=""
    ns=$(host_ns "$i")
    heal_host "$i"
    ip netns exec "$ns" iptables -t raw -N "$CUT_CHAIN"
    case "$scope" in
        all) ip netns exec "$ns" iptables -t raw -A "$CUT_CHAIN" -j DROP ;;
        hosts | inbound) for ((j = 0; j < $(cat "$LAB/hosts"); j++)); do [ "$j" = "$i" ] || peers="$peers $j"; done ;;
        hosts:*) peers=${scope#hosts:}; peers=${peers//,/ } ;;
        *) die "cut $i $scope: unknown scope" "use hosts, hosts:J,K, inbound or all" ;;
    esac
    for j in $peers; do
        ip netns exec "$ns" iptables -t raw -A "$CUT_CHAIN" -s "$(host_ip "$j")" -j DROP
        [ "$scope" = inbound ] || ip netns exec "$ns" iptables -t raw -A "$CUT_CHAIN" -d "$(host_ip "$j")" -j DROP
    done
    ip netns exec "$ns" iptables -t raw -I PREROUTING -i eth0 -j "$CUT_CHAIN"
    ip netns exec "$ns" iptables -t raw -I OUTPUT -o eth0 -j "$CUT_CHAIN"
}

heal_host() {
    local ns
    ns=$(host_ns "$1")
    ip netns exec "$ns" iptables -t raw -D PREROUTING -i eth0 -j "$CUT_CHAIN" 2>/dev/null || true
    ip netns exec "$ns" iptables -t raw -D OUTPUT -o eth0 -j "$CUT_CHAIN" 2>/dev/null || true
    ip netns exec "$ns" iptables -t raw -F "$CUT_CHAIN" 2>/dev/null || true
    ip netns exec "$ns" iptables -t raw -X "$CUT_CHAIN" 2>/dev/null || true
}

# The lab stack's config, written outside the repository (make up passes it with --config-file):
# the hosts with their SSH host keys pinned, and the lab's Corrosion build.
stack_config() {
    local file=$1 engine=${2:-none} n i key
    n=$(cat "$LAB/hosts")
    {
        echo "# The local lab (lab/lab.sh stack-config); make up adds the SSH key as a secret."
        echo "config:"
        echo "  jiji-net:container_engine: $engine"
        echo "  jiji-net:corrosion_local_path: $JIJI_CACHE/corrosion/klukai-$KLUKAI_VERSION/bin/corrosion"
        echo "  jiji-net:servers:"
        for ((i = 0; i < n; i++)); do
            key=$(ssh-keyscan -t ed25519 "$(host_ip "$i")" 2>/dev/null | awk '{print $2, $3; exit}')
            [ -n "$key" ] || die "host $i did not show its SSH host key" "run lab/lab.sh status"
            echo "    - {name: lab$i, host: $(host_ip "$i"), index: $i, endpoint: $(host_ip "$i"), host_key: \"$key\"}"
        done
    } >"$file.new"
    mv "$file.new" "$file"
}

down() {
    need_root "network namespaces and systemd-nspawn"
    step "lab down"
    local dir i
    for dir in "$LAB"/h*; do
        [ -d "$dir" ] || continue
        i=${dir##*/h}
        stop_host "$i"
        mountpoint -q "$dir/root" && umount "$dir/root"
        ip link del "jl-h$i" 2>/dev/null || true
        ip netns del "$(host_ns "$i")" 2>/dev/null || true
    done
    if [ -f "$LAB/resolver.pid" ]; then
        kill "$(cat "$LAB/resolver.pid")" 2>/dev/null || true
    fi
    ip link del jl-dns 2>/dev/null || true
    ip netns del "$RESOLVER_NS" 2>/dev/null || true
    ip link del "$BRIDGE" 2>/dev/null || true
    if [ -f "$LAB/inotify.orig" ]; then sysctl -qw fs.inotify.max_user_instances="$(cat "$LAB/inotify.orig")"; fi
    rm -rf "$LAB"
    step "lab down: nothing left"
}

status() {
    [ -f "$LAB/hosts" ] || { echo "lab: down"; return; }
    local n i
    n=$(cat "$LAB/hosts")
    for ((i = 0; i < n; i++)); do
        printf 'host %d %s: %s\n' "$i" "$(host_ip "$i")" "$(lab_ssh "$i" 'systemctl is-system-running' 2>/dev/null || echo unreachable)"
    done
}

case "${1:-}" in
    up) up "${2:-3}" ;;
    down) down ;;
    status) status ;;
    ssh) shift; lab_ssh "$@" ;;
    rootfs) check_prereqs; build_rootfs ;;
    image) lab_image "$2" "${3:-podman}" ;;
    stop) stop_host "$2" ;;
    start) start_host "$2"; ready_host "$2" ;;
    reset) reset_host "$2" ;;
    cut) cut_host "$2" "${3:-hosts}" ;;
    heal) heal_host "$2" ;;
    stack-config) stack_config "$2" "${3:-none}" ;;
    demo) demo ;;
    *) die "usage: lab/lab.sh up [N] | down | status | ssh I CMD | image I [podman|docker] | stop I | start I | reset I | cut I [hosts|hosts:J,K|inbound|all] | heal I | stack-config FILE [ENGINE] | demo" "pick one of those" ;;
esac
