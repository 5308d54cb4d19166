#!/usr/bin/env bash
# HTTP/1.1 reverse-proxy benchmark: Blitz (hello_gateway) side by side with nginx and
# haproxy in front of the same origin, in one run on this machine.
# Method: shared/bench-peers/run-peers.sh (see DESIGN.md "Performance method").
#
#   bench/run-h1.sh                        # DUR=10 REPS=3 CONNS=50, 10,000 idle conns
#   DUR=5 REPS=3 bench/run-h1.sh           # quicker
#   ONLY="direct blitz" bench/run-h1.sh    # subset of: direct nginx haproxy blitz blitz-poll
#   BLITZ_BIN=/path/hello_gateway ...      # skip the cargo build
#   IDLE_CONNS=0 ...                       # skip the idle-connection memory test
#   IDLE_PROXIES="blitz nginx haproxy"     # which proxies get it (default blitz nginx)
#   QUIET_PCT=10 QUIET_WAIT=5              # wait (max QUIET_WAIT s) for the box to be quiet before each run
#   BENCH_NICE=-15                         # priority of servers + load generator (shared box)
#
# Pinning (2 cores): the proxy under test on CPU 0; origin + wrk on CPU 1. "direct"
# (wrk -> origin) is therefore the ceiling of CPU 1, and a proxy at ratio 1.0 keeps up.
# All traffic is on 127.0.0.1; every load run is time-bounded (wrk -d plus `timeout`).
# Only processes this script started are stopped, by PID.
set -uo pipefail

DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$DIR/.." && pwd)
# own session => own scheduler autogroup, so BENCH_NICE beats other tenants' jobs
if [ -z "${BENCH_SETSID:-}" ] && command -v setsid >/dev/null; then
    BENCH_SETSID=1 exec setsid -w bash "$DIR/$(basename "$0")" "$@"
fi

RUN=$DIR/run                 # scratch: pids, logs, tmp (git-ignored)
RES=${RES:-$DIR/results}     # raw wrk outputs, runs.tsv, memory.tsv, table.md (git-ignored)
DUR=${DUR:-10}
WARM=${WARM:-2}
REPS=${REPS:-3}
CONNS=${CONNS:-50}
IDLE_CONNS=${IDLE_CONNS:-10000}
IDLE_PROXIES=${IDLE_PROXIES:-blitz nginx}   # haproxy: maxconn 9000 fits a 20,000-fd limit only
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
ORIGIN_CPU=${ORIGIN_CPU:-1}
P_ORIGIN=9200 P_NGINX=9201 P_HAPROXY=9202 P_BLITZ=9203 P_BLITZ_POLL=9204

cd "$DIR"
mkdir -p "$RUN/tmp" "$RES"
rm -f "$RES"/*.txt "$RES"/runs.tsv "$RES"/memory.tsv "$RES"/idle.tsv

# Shared helpers: log, priority, server start/stop, sanity checks, CPU/RSS sampling.
source "$DIR/lib.sh"

# ---------------------------------------------------------------- tools
if [ -z "${SKIP_INSTALL:-}" ]; then
    "$REPO/scripts/install-test-deps.sh" || { log "installing dependencies failed"; exit 1; }
fi
for t in nginx haproxy wrk taskset curl python3; do
    command -v $t >/dev/null || { log "missing $t (scripts/install-test-deps.sh)"; exit 1; }
done

# ---------------------------------------------------------------- blitz binary
if [ -n "${BLITZ_BIN:-}" ]; then
    BIN=$BLITZ_BIN
else
    TD=${CARGO_TARGET_DIR:-$REPO/target}
    log "cargo build --release -p blitz-runtime --features mimalloc --example hello_gateway (target dir $TD)"
    ( cd "$REPO" && CARGO_TARGET_DIR=$TD timeout 1800 cargo build --release -q -p blitz-runtime --features mimalloc --example hello_gateway ) \
        >"$RUN/blitz-build.log" 2>&1 || { log "build failed; see $RUN/blitz-build.log"; tail -n 20 "$RUN/blitz-build.log" >&2; exit 1; }
    BIN=$TD/release/examples/hello_gateway
fi
[ -x "$BIN" ] || { log "no executable at $BIN"; exit 1; }

# ---------------------------------------------------------------- priority, fds, servers
# 10,000 idle client connections + as many server-side fds (inherited by every server)
bench_priority_and_fds
ports_free $P_ORIGIN $P_NGINX $P_HAPROXY $P_BLITZ $P_BLITZ_POLL || exit 1

log "starting servers"
start origin  $ORIGIN_CPU nginx -p "$DIR/" -c conf/nginx-origin.conf -e run/nginx-origin.err -g 'daemon off;'
start nginx   $PROXY_CPU  nginx -p "$DIR/" -c conf/nginx-proxy.conf -e run/nginx-proxy.err -g 'daemon off;'
start haproxy $PROXY_CPU  haproxy -db -f conf/haproxy-proxy.cfg
start blitz   $PROXY_CPU  "$BIN" --listen 127.0.0.1:$P_BLITZ --upstream 127.0.0.1:$P_ORIGIN --workers 1
HAVE_POLL=
if [[ " ${ONLY:-} " == *" blitz-poll "* ]]; then
    start blitz-poll $PROXY_CPU "$BIN" --listen 127.0.0.1:$P_BLITZ_POLL --upstream 127.0.0.1:$P_ORIGIN --workers 1 --driver poll
    HAVE_POLL=1
fi
ok=1
for pair in "origin $P_ORIGIN" "nginx $P_NGINX" "haproxy $P_HAPROXY" "blitz $P_BLITZ" ${HAVE_POLL:+"blitz-poll $P_BLITZ_POLL"}; do
    read -r n p <<<"$pair"
    wait_http "http://127.0.0.1:$p/" || { log "$n on :$p did not come up"; tail -n 5 "$RUN/$n.out" >&2; exit 1; }
    check_body "$n" "http://127.0.0.1:$p/" || ok=
done
[ -n "$ok" ] || { log "sanity check failed"; exit 1; }
BLITZ_DRIVER=$(grep -o 'driver=[a-z_]*' "$RUN/blitz.out" | head -1)

NGINX_WORKER=$(pgrep -P "${PIDS[nginx]}" | head -1)
ORIGIN_WORKER=$(pgrep -P "${PIDS[origin]}" | head -1)
proxy_pid() { case $1 in nginx) echo "$NGINX_WORKER" ;; haproxy) echo "${PIDS[haproxy]}" ;;
              blitz) echo "${PIDS[blitz]}" ;; blitz-poll) echo "${PIDS[blitz-poll]:-}" ;; *) echo "" ;; esac; }
port_of() { case $1 in direct) echo $P_ORIGIN ;; nginx) echo $P_NGINX ;; haproxy) echo $P_HAPROXY ;;
            blitz) echo $P_BLITZ ;; blitz-poll) echo $P_BLITZ_POLL ;; esac; }

# ---------------------------------------------------------------- versions
{
    echo "date: $(date -u +%FT%TZ)"
    echo "kernel: $(uname -r)"
    echo "nproc: $(nproc); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "nginx: $(nginx -v 2>&1 | sed 's/.*version: //')"
    echo "haproxy: $(haproxy -v | head -1)"
    echo "wrk: $(wrk -v 2>&1 | head -1 | awk '{print $2}')"
    echo "blitz: $BIN ($BLITZ_DRIVER, --workers 1; git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo none)); $(rustc --version 2>/dev/null)"
    echo "pinning: proxy CPU $PROXY_CPU, origin CPU $ORIGIN_CPU, wrk CPU $LOAD_CPU; nice $BENCH_NICE; DUR=${DUR}s WARM=${WARM}s REPS=$REPS CONNS=$CONNS IDLE_CONNS=$IDLE_CONNS"
} > "$RES/versions.txt"
cat "$RES/versions.txt" >&2

# ---------------------------------------------------------------- load runs
# load URL SECONDS OUTFILE [PID to sample RSS from mid-run] -> "rps p50ms p99ms errors rss_kib"
load() {
    local url=$1 secs=$2 out=$3 pid=${4:-} rss=NaN
    taskset -c "$LOAD_CPU" timeout $((secs + 20)) wrk -t1 -c"$CONNS" -d"${secs}s" --latency "$url" >"$out" 2>&1 &
    local w=$!
    if [ -n "$pid" ]; then sleep "$(awk -v s="$secs" 'BEGIN{print s/2}')"; rss=$(rss_kib "$pid"); fi
    wait "$w"
    local rps p50 p99 err
    rps=$(awk '/^Requests\/sec:/{print $2}' "$out")
    p50=$(to_ms "$(awk '$1=="50%"{print $2}' "$out")")
    p99=$(to_ms "$(awk '$1=="99%"{print $2}' "$out")")
    err=$(awk '/Non-2xx/{n+=$NF} /Socket errors/{gsub(/,/,""); n+=$4+$6+$8+$10} END{print n+0}' "$out")
    echo "${rps:-0} ${p50:-NaN} ${p99:-NaN} $err ${rss:-NaN}"
}

CONFIGS=(direct nginx haproxy blitz)
[ -n "$HAVE_POLL" ] && CONFIGS+=(blitz-poll)
if [ -n "${ONLY:-}" ]; then
    sel=(); for c in "${CONFIGS[@]}"; do [[ " $ONLY " == *" $c "* ]] && sel+=("$c"); done; CONFIGS=("${sel[@]}")
fi

measure_all http

# ---------------------------------------------------------------- memory
{
    printf 'process\tpid\tVmRSS_KiB_after_load\tthreads\n'
    for c in nginx haproxy blitz blitz-poll; do
        p=$(proxy_pid "$c"); [ -n "$p" ] || continue
        printf '%s\t%s\t%s\t%s\n' "$c" "$p" "$(rss_kib "$p")" "$(ls /proc/$p/task 2>/dev/null | wc -l)"
    done
    printf 'origin-worker\t%s\t%s\t1\n' "$ORIGIN_WORKER" "$(rss_kib "$ORIGIN_WORKER")"
} > "$RES/memory.tsv"

if [ "$IDLE_CONNS" -gt 0 ]; then
    printf 'proxy\tconns_open\trss_before_kib\trss_after_kib\tkib_per_conn\n' > "$RES/idle.tsv"
    for c in $IDLE_PROXIES; do
        [[ " ${CONFIGS[*]} " == *" $c "* ]] || continue
        log "idle connections: $IDLE_CONNS to $c"
        out=$(taskset -c "$LOAD_CPU" timeout 180 python3 "$DIR/idle_conns.py" "$(port_of "$c")" "$(proxy_pid "$c")" \
              --conns "$IDLE_CONNS" 2>"$RUN/idle-$c.err")
        printf '%s\t%s\n' "$c" "${out:-NaN	NaN	NaN	NaN}" >> "$RES/idle.tsv"
        log "$c: $out $(cat "$RUN/idle-$c.err")"
        sleep 2   # let the proxy reap the closed connections
    done
fi

# ---------------------------------------------------------------- summary
"$DIR/summarize-h1.sh" "$RES" > "$RES/table.md"
echo
cat "$RES/versions.txt"
echo
cat "$RES/table.md"
