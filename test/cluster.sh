#!/usr/bin/env bash
# A local aisexec cluster for trying things by hand.
#
#   test/cluster.sh up [N]    start N nodes (default 3) on 127.0.0.1..N (udpu), wait for
#                             their ring, print each node's AIS_SOCKET export line
#   test/cluster.sh status    each node's pid and latest configuration
#   test/cluster.sh down      stop every node (SIGTERM, then SIGKILL) and remove the state
#
# Node i has nodeid i, listens on 127.0.0.i:$AIS_CLUSTER_PORT (default 5405) and keeps
# its configuration, runtime directory (socket, ringseq) and log under the state
# directory, $AIS_CLUSTER_DIR (default ${TMPDIR:-/tmp}/aisexec-cluster). Totem runs with
# token $AIS_CLUSTER_TOKEN ms (default 1000) and no per-node coefficient, so a killed
# node is noticed in about 2 s.
#
# It builds nothing: it runs the binaries of `cargo build --release` from
# ${CARGO_TARGET_DIR:-<repo>/target}/release ($AIS_BIN_DIR overrides the directory).
#
# Then, for example:
#   export AIS_SOCKET=...n1/aisexec.sock; target/release/testcpg
#   kill -9 <pid of node 2>; test/cluster.sh status

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${AIS_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}"
STATE="${AIS_CLUSTER_DIR:-${TMPDIR:-/tmp}/aisexec-cluster}"
PORT="${AIS_CLUSTER_PORT:-5405}"
TOKEN="${AIS_CLUSTER_TOKEN:-1000}"
RING_WAIT_S=10

die() {
    echo "cluster.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# Node numbers of the cluster in the state directory, one per line.
nodes() {
    local conf
    for conf in "$STATE"/n*.conf; do
        [[ -e $conf ]] || return 0
        conf="${conf##*/n}"
        echo "${conf%.conf}"
    done | sort -n
}

# The pid of node $1's daemon if it is running (and is ours), else nothing.
node_pid() {
    local pidfile="$STATE/n$1.pid" pid
    [[ -f $pidfile ]] || return 0
    pid="$(cat "$pidfile")"
    # A recycled pid must not be taken for our daemon: check its command line.
    if [[ -r /proc/$pid/cmdline ]] &&
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "--config $STATE/n$1.conf"; then
        echo "$pid"
    fi
}

# Node $1's latest regular configuration line, without the timestamp and level.
latest_conf() {
    grep -F '] configuration ' "$STATE/n$1.log" 2>/dev/null | tail -n 1 | sed 's/^.*\] //' || true
}

write_config() {
    local i=$1 n=$2 j
    {
        echo "totem {"
        echo "    version: 2"
        echo "    nodeid: $i"
        echo "    transport: udpu"
        echo "    cluster_name: local"
        echo "    token: $TOKEN"
        echo "    token_coefficient: 0"
        echo "    secauth: off"
        echo "    interface {"
        echo "        ringnumber: 0"
        echo "        bindnetaddr: 127.0.0.$i"
        echo "        mcastport: $PORT"
        for ((j = 1; j <= n; j++)); do
            echo "        member {"
            echo "            memberaddr: 127.0.0.$j"
            echo "        }"
        done
        echo "    }"
        echo "}"
        echo "logging {"
        echo "    to_stderr: on"
        echo "    timestamp: on"
        echo "}"
        echo "aisexec {"
        echo "    runtime_dir: $STATE/n$i"
        echo "}"
    } >"$STATE/n$i.conf"
}

cmd_up() {
    local n="${1:-3}" i all members pid deadline
    [[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= 254)) || die "N must be 1..254, not '$n'"
    for b in aisexec testcpg cpgverify aisbench; do
        [[ -x $BIN/$b ]] || die "$BIN/$b not found: build first with 'cargo build --release --workspace'"
    done
    if [[ -n "$(nodes)" ]]; then
        for i in $(nodes); do
            [[ -z "$(node_pid "$i")" ]] || die "a cluster is already up in $STATE: '$0 down' first"
        done
        rm -rf "$STATE" # left over from a cluster whose daemons are gone
    fi
    mkdir -p "$STATE"
    all=""
    for ((i = 1; i <= n; i++)); do
        write_config "$i" "$n"
        all="${all:+$all,}$i"
    done
    for ((i = 1; i <= n; i++)); do
        # setsid: the daemons outlive this shell and its terminal's signals.
        setsid "$BIN/aisexec" --config "$STATE/n$i.conf" </dev/null >"$STATE/n$i.log" 2>&1 &
        echo $! >"$STATE/n$i.pid"
    done
    deadline=$((SECONDS + RING_WAIT_S))
    while :; do
        members=0
        for ((i = 1; i <= n; i++)); do
            [[ -n "$(node_pid "$i")" ]] || {
                tail -n 20 "$STATE/n$i.log" >&2
                die "node $i exited (log above, in $STATE/n$i.log); '$0 down' to clean up"
            }
            [[ "$(latest_conf "$i")" == *"members {$all} "* ]] && members=$((members + 1))
        done
        ((members == n)) && break
        ((SECONDS < deadline)) || {
            cmd_status >&2
            die "no ring of {$all} within ${RING_WAIT_S}s (logs in $STATE); '$0 down' to clean up"
        }
        sleep 0.1
    done
    echo "# $n nodes up in one ring: $(latest_conf 1 | sed 's/ joined.*//')"
    for ((i = 1; i <= n; i++)); do
        pid="$(node_pid "$i")"
        echo "export AIS_SOCKET=$STATE/n$i/aisexec.sock   # node $i, 127.0.0.$i:$PORT, pid $pid"
    done
}

cmd_status() {
    local i pid any=""
    for i in $(nodes); do
        any=1
        pid="$(node_pid "$i")"
        if [[ -n $pid ]]; then
            printf 'node %s  pid %-7s running  %s\n' "$i" "$pid" "$(latest_conf "$i")"
        else
            printf 'node %s  %-11s stopped  (log %s)\n' "$i" "" "$STATE/n$i.log"
        fi
    done
    [[ -n $any ]] || echo "no cluster in $STATE"
}

cmd_down() {
    local i pid stopped=0 deadline
    [[ -d $STATE ]] || {
        echo "no cluster in $STATE"
        return 0
    }
    # SIGTERM first: each node announces its leave, as a real shutdown does.
    for i in $(nodes); do
        pid="$(node_pid "$i")"
        if [[ -n $pid ]]; then
            kill -TERM "$pid" 2>/dev/null || true
            stopped=$((stopped + 1))
        fi
    done
    deadline=$((SECONDS + 5))
    for i in $(nodes); do
        while [[ -n "$(node_pid "$i")" ]] && ((SECONDS < deadline)); do
            sleep 0.05
        done
        pid="$(node_pid "$i")"
        if [[ -n $pid ]]; then
            echo "cluster.sh: node $i (pid $pid) ignored SIGTERM; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$STATE"
    echo "stopped $stopped node(s); removed $STATE"
}

case "${1:-}" in
up) cmd_up "${2:-3}" ;;
down) cmd_down ;;
status) cmd_status ;;
*) usage ;;
esac
