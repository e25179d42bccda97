#!/usr/bin/env bash
# test/bench/run.sh: aisexec on three nodes in network namespaces (the topology of
# ../shared/bench/corosync/), measured with aisbench; then, when corosync is installed,
# corosync's anchor benchmark in the same invocation, so the ratios compare like with
# like on a machine whose speed drifts from hour to hour.
#
#   sudo test/bench/run.sh            # about 6 minutes without corosync, 15 with it
#
# After a discarded warm-up round (one latency and one throughput run), measures,
# REPS times each: UDP wire limit (iperf3, when installed); CPG throughput at
# node 1 for SIZES with 1 sender (node 1) and 3 senders; latency (one message at a time,
# send to self-delivery) for LAT_SIZES; kill -9 to confchg at node 1 for corosync's
# default timeouts and for the LAN profile (token 300 ms); membership changes during a
# SOAK_S full-load run with the LAN profile; idle CPU; CPU% and RSS of the executives
# during every run. Writes the raw lines to $WORK/raw.txt, a report to $WORK/results.md,
# and splices the report into test/bench/RESULTS.md between its run.sh markers.
#
# Knobs (environment, defaults in brackets): REPS [3], DUR [3] s per throughput run,
# SIZES ["64 1024 8192 65536"], LAT_SIZES ["64 1024"], LAT_S [3], WIRE_SIZES (iperf3's datagram
# sizes, "" for none) ["1024 1472 8192 65000"], TRANSPORTS ["udp udpu"]
# (aisexec's: multicast and unicast),
# FAIL_REPS [=REPS], SOAK_S [60], IDLE_S [10], COROSYNC [auto|no], CS_TRANSPORTS
# ["udpu knet"], NETMTU and LINGER_US [unset: aisexec's defaults], RESULTS [test/bench/RESULTS.md, "-" for none], WORK [/tmp/aisbench-run],
# AIS_BIN_DIR [target/release]. Builds with `cargo build --release` first unless
# NO_BUILD=1. Needs root (namespaces); always tears down what it made.
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/test/bench"
BIN=${AIS_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
WORK=${WORK:-/tmp/aisbench-run}
REPS=${REPS:-3}
DUR=${DUR:-3}
SIZES=${SIZES-"64 1024 8192 65536"}
LAT_SIZES=${LAT_SIZES:-"64 1024"}
LAT_S=${LAT_S:-3}
WIRE_SIZES=${WIRE_SIZES-"1024 1472 8192 65000"}
TRANSPORTS=${TRANSPORTS:-"udp udpu"}
TRANSPORT=""
FAIL_REPS=${FAIL_REPS:-$REPS}
SOAK_S=${SOAK_S:-60}
IDLE_S=${IDLE_S:-10}
COROSYNC=${COROSYNC:-auto}
CS_TRANSPORTS=${CS_TRANSPORTS:-"udpu knet"}
RESULTS=${RESULTS:-$HERE/RESULTS.md}
CS_DIR=${CS_DIR:-$ROOT/../shared/bench/corosync}

NET=198.18.2
PORT=5405
MCAST=239.192.2.1
NODES="1 2 3"
HZ=$(getconf CLK_TCK)
RAW=$WORK/raw.txt

die() {
    echo "run.sh: $*" >&2
    exit 1
}
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg | tr ' ' /; }

[ "$(id -u)" = 0 ] || die "must run as root: it creates network namespaces"
for c in ip timeout awk python3; do
    command -v "$c" >/dev/null || die "missing command $c"
done

# ------------------------------------------------------------------ topology
# aisbr holds the bridge; ais1..3 are the hosts, 198.18.2.N/24, MTU 1500. Nothing is
# added to the host's own namespace.
net_down() {
    for i in $NODES; do ip netns del "ais$i" 2>/dev/null; done
    ip netns del aisbr 2>/dev/null
    return 0
}

net_up() {
    net_down
    ip netns add aisbr || return 1
    ip -n aisbr link add br0 type bridge || return 1
    ip -n aisbr link set br0 type bridge mcast_snooping 0 2>/dev/null
    ip -n aisbr link set br0 up
    for i in $NODES; do
        ip netns add "ais$i" || return 1
        ip link add "vais$i" type veth peer name "pais$i" || return 1
        ip link set "vais$i" netns "ais$i"
        ip link set "pais$i" netns aisbr
        ip -n aisbr link set "pais$i" master br0 up
        ip -n "ais$i" addr add "$NET.$i/24" dev "vais$i"
        ip -n "ais$i" link set "vais$i" mtu 1500 up
        ip -n "ais$i" link set lo up
        ip -n "ais$i" route add 224.0.0.0/4 dev "vais$i"
    done
}

# ------------------------------------------------------------------ executives
# Profiles: "default" is corosync's (token 3000 ms + 650 ms per node above two,
# consensus 1.2 x token); "lan" is totem's lan_profile (token 300 ms + 50 ms per node).
conf() { # node profile
    local i=$1 token coef members="" j
    case $2 in
    default) token=3000 coef=650 ;;
    lan) token=300 coef=50 ;;
    *) die "unknown profile $2" ;;
    esac
    if [ "$TRANSPORT" = udpu ]; then
        for j in $NODES; do
            members+="
        member {
            memberaddr: $NET.$j
        }"
        done
    else
        members="
        mcastaddr: $MCAST"
    fi
    cat <<EOF
totem {
    version: 2
    nodeid: $i
    transport: $TRANSPORT
    cluster_name: aisbench
    token: $token
    token_coefficient: $coef${NETMTU:+
    netmtu: $NETMTU}${LINGER_US:+
    linger_us: $LINGER_US}
    interface {
        ringnumber: 0
        bindnetaddr: $NET.$i
        mcastport: $PORT$members
    }
}
logging {
    to_stderr: on
    timestamp: on
}
aisexec {
    runtime_dir: $WORK/n$i
}
EOF
}

declare -A PID=()
PROFILE=""

start_node() { # node
    local i=$1
    mkdir -p "$WORK/n$i"
    conf "$i" "$PROFILE" >"$WORK/n$i.conf"
    ip netns exec "ais$i" "$BIN/aisexec" --config "$WORK/n$i.conf" >>"$WORK/n$i.log" 2>&1 &
    PID[$i]=$!
}

stop_all() {
    local i
    for i in "${!PID[@]}"; do
        kill -TERM "${PID[$i]}" 2>/dev/null
    done
    for i in "${!PID[@]}"; do
        timeout 5 tail --pid="${PID[$i]}" -f /dev/null 2>/dev/null || kill -KILL "${PID[$i]}" 2>/dev/null
        wait "${PID[$i]}" 2>/dev/null
        unset "PID[$i]"
    done
}

# Node $1's latest regular configuration line.
last_conf() { grep '\] configuration ' "$WORK/n$1.log" 2>/dev/null | tail -1 | sed 's/.*\] configuration //; s/ joined .*//'; }

# Waits (at most 40 s) until the listed nodes share one configuration of exactly them.
wait_ring() {
    local want="{$(echo "$*" | tr ' ' ,)}" deadline=$((SECONDS + 40)) i first ok
    while [ $SECONDS -lt $deadline ]; do
        first=$(last_conf "$1")
        ok=1
        for i in "$@"; do
            [ "$(last_conf "$i")" = "$first" ] || ok=0
        done
        case $first in *"members $want") ;; *) ok=0 ;; esac
        if [ $ok = 1 ] && [ -S "$WORK/n$1/aisexec.sock" ]; then return 0; fi
        sleep 0.05
    done
    log "no ring of $want within 40 s: $(for i in "$@"; do echo -n "n$i=[$(last_conf "$i")] "; done)"
    return 1
}

cluster_up() { # profile
    stop_all
    PROFILE=$1
    rm -rf "$WORK"/n? "$WORK"/n?.log "$WORK"/n?.conf
    for i in $NODES; do start_node "$i"; done
    wait_ring $NODES
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# CPU% of one core used by each executive between two tick samples over $3 seconds.
cpu_pct() { # "before ticks" "after ticks" seconds
    python3 - "$1" "$2" "$3" "$HZ" <<'EOF'
import sys
b, a, s, hz = sys.argv[1].split(), sys.argv[2].split(), float(sys.argv[3]), float(sys.argv[4])
print("/".join(f"{(float(y) - float(x)) / hz / s * 100:.1f}" for x, y in zip(b, a)))
EOF
}
all_ticks() { local i; for i in $NODES; do cpu_ticks "${PID[$i]}"; done | tr '\n' ' '; }
all_hwm() { local i; for i in $NODES; do hwm_kib "${PID[$i]}"; done | tr '\n' '/' | sed 's:/$::'; }
all_rss() { local i; for i in $NODES; do rss_kib "${PID[$i]}"; done | tr '\n' '/' | sed 's:/$::'; }

client() { # node, then the client's arguments: runs one client of that node
    local i=$1
    shift
    AIS_SOCKET="$WORK/n$i/aisexec.sock" ip netns exec "ais$i" timeout -s KILL $((DUR + 60)) "$@"
}

# ------------------------------------------------------------------ measurements
measure_wire() {
    command -v iperf3 >/dev/null || {
        log "iperf3 not installed: no wire limit"
        return
    }
    local size rep
    for size in $WIRE_SIZES; do
        for rep in $(seq "$REPS"); do
            ip netns exec ais2 iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
            local srv=$!
            sleep 0.3
            local out
            out=$(ip netns exec ais1 timeout 20 iperf3 -u -b 0 -l "$size" -t "$DUR" -c "$NET.2" -p 5201 -J 2>/dev/null)
            wait $srv 2>/dev/null
            local res
            res=$(echo "$out" | python3 "$HERE/summarize.py" --iperf "$size")
            echo "test=wire size=$size rep=$rep load=$(loadavg) RESULT ${res:-failed=1}" >>"$RAW"
        done
    done
}

tput() { # senders size rep
    local senders=$1 size=$2 rep=$3 i before after t0 t1 group="t$1s$2r$3" pids=()
    for i in $NODES; do
        if [ "$i" -le "$senders" ]; then
            client "$i" "$BIN/aisbench" --mode tput --size "$size" --seconds "$DUR" --group "$group" \
                >"$WORK/c$i.out" 2>"$WORK/c$i.err" &
            pids+=($!)
        else
            client "$i" "$BIN/aisbench" --mode tput --size "$size" --seconds "$DUR" --group "$group" \
                --receive-only >"$WORK/c$i.out" 2>"$WORK/c$i.err" &
            pids+=($!)
        fi
    done
    local load
    load=$(loadavg)
    before=$(all_ticks)
    t0=$(date +%s.%N)
    wait "${pids[@]}"
    t1=$(date +%s.%N)
    after=$(all_ticks)
    local secs cpu tryagain
    secs=$(python3 -c "print($t1 - $t0)")
    cpu=$(cpu_pct "$before" "$after" "$secs")
    tryagain=$(cat "$WORK"/c?.err | awk -F= '/^TRYAGAIN/ {s += $2} END {print s + 0}')
    local res
    res=$(grep '^RESULT' "$WORK/c1.out" | tail -1)
    [ -n "$res" ] || res="RESULT failed=1 $(tail -2 "$WORK/c1.err" | tr '\n' ' ')"
    echo "transport=$TRANSPORT test=tput senders=$senders size=$size rep=$rep load=$load $res cpu_exec=$cpu tryagain=$tryagain rss_kib=$(all_rss) hwm_kib=$(all_hwm)" >>"$RAW"
    log "tput senders=$senders size=$size rep=$rep: $res cpu=$cpu"
}

latency() { # size rep
    local size=$1 rep=$2 before after group="l$1r$2" load pids=()
    for i in 2 3; do
        client "$i" "$BIN/aisbench" --mode tput --size "$size" --seconds "$((LAT_S + 1))" --group "$group" \
            --receive-only >/dev/null 2>&1 &
        pids+=($!)
    done
    sleep 0.3
    load=$(loadavg)
    before=$(all_ticks)
    client 1 "$BIN/aisbench" --mode lat --size "$size" --seconds "$LAT_S" --group "$group" \
        >"$WORK/c1.out" 2>"$WORK/c1.err"
    after=$(all_ticks)
    wait "${pids[@]}"
    local res
    res=$(grep '^RESULT' "$WORK/c1.out" | tail -1)
    [ -n "$res" ] || res="RESULT failed=1"
    local tail
    tail=$(grep '^LATENCY' "$WORK/c1.err" | tail -1 | cut -d' ' -f2-)
    echo "transport=$TRANSPORT test=lat size=$size rep=$rep load=$load $res cpu_exec=$(cpu_pct "$before" "$after" "$LAT_S") $tail" >>"$RAW"
    log "lat size=$size rep=$rep: $res"
    log "    tail: $tail"
}

# kill -9 of node 3's executive; time until node 1's CPG client reports it gone.
failure() { # rep
    local rep=$1 i t0 line t1 pids=()
    for i in $NODES; do
        client "$i" "$BIN/testcpg" --group fail </dev/null >"$WORK/f$i.out" 2>/dev/null &
        pids+=($!)
    done
    # Every client sees all three in the group first.
    local deadline=$((SECONDS + 20))
    while [ $SECONDS -lt $deadline ]; do
        grep -q "members=[0-9:]*,[0-9:]*,[0-9:]*" "$WORK/f1.out" 2>/dev/null && break
        sleep 0.05
    done
    sleep 1
    : >"$WORK/f1.times"
    # Timestamps every line of node 1's client from now on.
    (tail -n0 -F "$WORK/f1.out" 2>/dev/null | while IFS= read -r l; do
        echo "$(date +%s%N) $l"
    done >>"$WORK/f1.times") &
    local stamper=$!
    sleep 0.2
    t0=$(date +%s%N)
    kill -KILL "${PID[3]}"
    wait "${PID[3]}" 2>/dev/null
    unset "PID[3]"
    t1=""
    deadline=$((SECONDS + 30))
    while [ $SECONDS -lt $deadline ]; do
        line=$(grep -m1 "CONFCHG.*left=3:" "$WORK/f1.times")
        if [ -n "$line" ]; then
            t1=${line%% *}
            break
        fi
        sleep 0.01
    done
    # Its children first: once the subshell is gone they belong to init, and pkill -P
    # would no longer find them.
    pkill -P "$stamper" 2>/dev/null
    kill "$stamper" 2>/dev/null
    wait "$stamper" 2>/dev/null
    local token coef
    case $PROFILE in default) token=3000 coef=650 ;; lan) token=300 coef=50 ;; esac
    if [ -n "$t1" ]; then
        echo "transport=$TRANSPORT test=fail profile=$PROFILE rep=$rep load=$(loadavg) RESULT detect_ms=$(((t1 - t0) / 1000000)) token_ms=$((token + coef)) consensus_ms=$(((token + coef) * 12 / 10))" >>"$RAW"
    else
        echo "transport=$TRANSPORT test=fail profile=$PROFILE rep=$rep RESULT failed=1" >>"$RAW"
    fi
    log "fail profile=$PROFILE rep=$rep: $(tail -1 "$RAW" | sed 's/.*RESULT //')"
    kill "${pids[@]}" 2>/dev/null
    wait "${pids[@]}" "$stamper" 2>/dev/null
    start_node 3
    wait_ring $NODES
}

# Membership changes at node 1 while all three send 1 KiB as fast as they can.
soak() {
    local before after
    before=$(grep -c '\] configuration ' "$WORK/n1.log")
    local save=$DUR
    DUR=$SOAK_S
    tput 3 1024 soak
    DUR=$save
    after=$(grep -c '\] configuration ' "$WORK/n1.log")
    echo "transport=$TRANSPORT test=soak profile=$PROFILE seconds=$SOAK_S load=$(loadavg) RESULT membership_changes=$((after - before))" >>"$RAW"
    log "soak: $((after - before)) membership changes in $SOAK_S s"
}

idle() {
    sleep 2
    local before after
    before=$(all_ticks)
    sleep "$IDLE_S"
    after=$(all_ticks)
    echo "transport=$TRANSPORT test=idle seconds=$IDLE_S load=$(loadavg) RESULT cpu_exec=$(cpu_pct "$before" "$after" "$IDLE_S") rss_kib=$(all_rss)" >>"$RAW"
    log "idle: $(tail -1 "$RAW" | sed 's/.*RESULT //')"
}

cleanup() {
    stop_all
    pkill -f "$BIN/aisbench" 2>/dev/null
    pkill -f "$BIN/testcpg" 2>/dev/null
    net_down
}

# ------------------------------------------------------------------ main
if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release --workspace -q) || die "cargo build failed"
fi
for b in aisexec aisbench testcpg; do
    [ -x "$BIN/$b" ] || die "no $BIN/$b: build the workspace (cargo build --release)"
done
mkdir -p "$WORK"
rm -f "$WORK"/*.out "$WORK"/*.err "$RAW"
trap cleanup EXIT
trap 'exit 130' INT TERM
net_up || die "cannot set up the namespaces"
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "kernel: $(uname -r)"
    echo "cpus: $(nproc) x $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "aisexec: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null) transports: $TRANSPORTS"
    echo "knobs: REPS=$REPS DUR=$DUR SIZES='$SIZES' LAT_SIZES='$LAT_SIZES' LAT_S=$LAT_S FAIL_REPS=$FAIL_REPS SOAK_S=$SOAK_S IDLE_S=$IDLE_S"
    echo "uptime at start: $(uptime)"
} >"$WORK/machine.txt"
STARTED=$SECONDS

measure_wire
for TRANSPORT in $TRANSPORTS; do
    log "aisexec, transport $TRANSPORT"
    cluster_up default || die "the cluster did not form ($TRANSPORT)"
    idle
    # A warm-up round, discarded (corosync's harness warms up before every window):
    # the first runs after the cluster starts, and after iperf3's floods, were the
    # slowest of their kind in every full run.
    latency 1024 warm
    tput 1 64 warm
    sed -i 's/ rep=warm \(.*\)RESULT/ rep=warm \1RESULT discarded=1/' "$RAW"
    for rep in $(seq "$REPS"); do
        for size in $LAT_SIZES; do latency "$size" "$rep"; done
        for size in $SIZES; do
            tput 1 "$size" "$rep"
            tput 3 "$size" "$rep"
        done
    done
    for rep in $(seq "$FAIL_REPS"); do failure "$rep"; done
    if [ "$FAIL_REPS" -gt 0 ] || [ "$SOAK_S" -gt 0 ]; then
        cluster_up lan || die "the cluster did not form with the LAN profile ($TRANSPORT)"
        for rep in $(seq "$FAIL_REPS"); do failure "$rep"; done
        [ "$SOAK_S" -gt 0 ] && soak
    fi
    stop_all
done
cleanup
trap - EXIT
echo "uptime at end: $(uptime)" >>"$WORK/machine.txt"
echo "elapsed: $((SECONDS - STARTED)) s (aisexec part)" >>"$WORK/machine.txt"

CS_RAW=""
if [ "$COROSYNC" != no ] && command -v corosync >/dev/null && [ -f "$CS_DIR/run.sh" ]; then
    log "corosync's benchmark, same sizes, same invocation"
    REPS=$REPS DUR=$DUR SIZES="$SIZES" TRANSPORTS="$CS_TRANSPORTS" OUT_MD="$WORK/corosync.md" \
        bash "$CS_DIR/run.sh" >"$WORK/corosync.log" 2>&1 || log "corosync's benchmark failed: see $WORK/corosync.log"
    [ -f "$WORK/corosync_raw.txt" ] && CS_RAW="$WORK/corosync_raw.txt"
fi
[ -n "$CS_RAW" ] || log "corosync not measured (COROSYNC=$COROSYNC; installed: $(command -v corosync || echo no))"

python3 "$HERE/summarize.py" "$WORK/machine.txt" "$RAW" "${CS_RAW:-}" >"$WORK/results.md" ||
    die "summarize failed"
if [ "$RESULTS" != "-" ]; then
    python3 "$HERE/summarize.py" --splice "$RESULTS" "$WORK/results.md" || die "cannot update $RESULTS"
    log "wrote $RESULTS"
fi
cat "$WORK/results.md"
