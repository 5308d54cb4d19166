# Helpers shared by bench/run-h1.sh and bench/run-tls.sh (sourced; they set DIR and
# RUN first). Method: shared/bench-peers/run-peers.sh (DESIGN.md "Performance method").

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# Runs servers and load at BENCH_NICE (own autogroup too), with room for many fds.
bench_priority_and_fds() {
    BENCH_NICE=${BENCH_NICE:--15}
    renice -n "$BENCH_NICE" -p $$ >/dev/null 2>&1 || log "renice failed (not root?) - normal priority"
    if [ -w /proc/$$/autogroup ]; then
        echo "$BENCH_NICE" > /proc/$$/autogroup 2>/dev/null || log "could not set autogroup nice"
    fi
    ulimit -Hn 65536 2>/dev/null; ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    log "priority: nice $(ps -o ni= -p $$ | tr -d ' '), $(cat /proc/$$/autogroup 2>/dev/null); nofile $(ulimit -n)"
}

# Servers this script started, by name; only these are stopped, by PID.
declare -A PIDS=()
cleanup() {
    local n p
    for n in "${!PIDS[@]}"; do kill -TERM "${PIDS[$n]}" 2>/dev/null; done
    for n in "${!PIDS[@]}"; do
        p=${PIDS[$n]}
        for _ in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ports_free PORT...: fails (and says which) if something listens on one of them.
ports_free() {
    local p
    for p in "$@"; do
        if ss -Hltn "sport = :$p" | grep -q .; then
            log "port $p already in use on this box; stop whatever owns it first"; return 1
        fi
    done
}

# start NAME CPU CMD...  (taskset execs the server, so $! is the server's own PID)
start() {
    local name=$1 cpu=$2; shift 2
    ( cd "$DIR" && exec taskset -c "$cpu" "$@" ) >"$RUN/$name.out" 2>&1 &
    PIDS[$name]=$!
}
# -k: the TLS bench's certificate is self-signed (harmless over http).
wait_http() { for _ in $(seq 100); do curl -sk -o /dev/null --max-time 1 "$1" && return 0; sleep 0.1; done; return 1; }
check_body() {
    local body; body=$(curl -sk --max-time 2 "$2")
    [ "$body" = "hello, world" ] && { log "ok: $1 $2"; return 0; }
    log "BAD response from $1 $2: '$body'"; return 1
}

# ---------------------------------------------------------------- sampling
cpu_snap() { awk '$1=="cpu0"||$1=="cpu1"{t=0; for(i=2;i<=9;i++)t+=$i; print $1, t, $5+$6}' /proc/stat; }
cpu_busy() { paste -d' ' <(echo "$1") <(echo "$2") | awk '{dt=$5-$2; di=$6-$3; printf "%.0f ", (dt>0?100*(dt-di)/dt:0)}'; }
rq_wait_ns() { local p; for p in "$@"; do cat /proc/$p/task/*/schedstat 2>/dev/null; done | awk '{s+=$2} END{printf "%d", s}'; }
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null; }
to_ms() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us$/,"",v); print v/1000}
    else if (v ~ /ms$/) {sub(/ms$/,"",v); print v+0} else if (v ~ /s$/) {sub(/s$/,"",v); print v*1000}
    else print "NaN" }'; }
wait_quiet() {
    local waited=0 s0 s1 busy
    while :; do
        s0=$(cpu_snap); sleep 1; s1=$(cpu_snap)
        busy=$(paste -d' ' <(echo "$s0") <(echo "$s1") | awk '{b+=($5-$2)-($6-$3); t+=$5-$2} END{printf "%d", (t>0 ? 100*b/t : 0)}')
        [ "$busy" -le "${QUIET_PCT:-10}" ] && break
        waited=$((waited + 1))
        [ "$waited" -ge "${QUIET_WAIT:-5}" ] && { log "box still ${busy}% busy after ${waited}s; running anyway"; break; }
    done
    echo "$waited"
}


# ---------------------------------------------------------------- measuring
# measure_all SCHEME: warm-up, then REPS interleaved rounds over CONFIGS, one
# row per run in $RES/runs.tsv. The calling script defines CONFIGS, DUR,
# WARM, REPS, RES and the functions load URL SECS OUT [PID], port_of CONFIG
# and proxy_pid CONFIG.
measure_all() {
    local scheme=$1 rep c qw pp w0 w1 s0 s1 r rqw rps p50 p99 err rss b0 b1
    log "warm-up (${WARM}s per config, not recorded)"
    for c in "${CONFIGS[@]}"; do load "$scheme://127.0.0.1:$(port_of "$c")/" "$WARM" "$RUN/warmup.txt" >/dev/null; done

    printf 'config\trep\trps\tp50_ms\tp99_ms\terrors\trss_kib\tcpu0_busy\tcpu1_busy\tproxy_rqwait_pct\tquiet_wait_s\n' > "$RES/runs.tsv"
    for rep in $(seq "$REPS"); do
        for c in "${CONFIGS[@]}"; do
            qw=$(wait_quiet)
            pp=$(proxy_pid "$c")
            w0=$(rq_wait_ns $pp); s0=$(cpu_snap)
            r=$(load "$scheme://127.0.0.1:$(port_of "$c")/" "$DUR" "$RES/$c.$rep.txt" "$pp")
            s1=$(cpu_snap); w1=$(rq_wait_ns $pp)
            rqw=$( [ -n "$pp" ] && awk -v d=$((w1 - w0)) -v s="$DUR" 'BEGIN{printf "%.1f", 100*d/(s*1e9)}' || echo NaN)
            read -r rps p50 p99 err rss <<<"$r"
            read -r b0 b1 <<<"$(cpu_busy "$s0" "$s1")"
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$rep" "$rps" "$p50" "$p99" "$err" "$rss" "$b0" "$b1" "$rqw" "$qw" >> "$RES/runs.tsv"
            log "rep $rep $c: rps=$rps p50=${p50}ms p99=${p99}ms err=$err rss=${rss}KiB cpu0=${b0}% cpu1=${b1}% proxy_rqwait=${rqw}%"
        done
    done
}
