#!/usr/bin/env bash
# TLS HTTP/1.1 reverse-proxy benchmark: wrk over https to Blitz (hello_gateway built with
# the `tls` feature), nginx and haproxy, each terminating TLS in front of the same
# cleartext origin, in one run on this machine. "direct" is wrk over https straight to
# the origin (nginx's own TLS listener): the ceiling of CPU 1.
# Method: shared/bench-peers/run-peers.sh (see DESIGN.md "Performance method").
#
#   bench/run-tls.sh                       # DUR=10 REPS=3 CONNS=50
#   DUR=5 REPS=3 bench/run-tls.sh          # quicker
#   ONLY="nginx blitz" bench/run-tls.sh    # subset of: direct nginx haproxy blitz
#   BLITZ_BIN=/path/hello_gateway ...      # skip the cargo build (needs the tls and h2 features)
#   PROTO=h2 bench/run-tls.sh              # HTTP/2 over TLS (ALPN h2): h2load -c50 -m10
#
# Pinning (2 cores): the proxy under test on CPU 0; origin + wrk on CPU 1.
# Certificate: EC P-256, self-signed, made in bench/run/tls/ (as run-peers.sh does).
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
PROTO=${PROTO:-h1}           # h1: wrk (http/1.1 over TLS); h2: h2load (ALPN h2)
RES=${RES:-$DIR/results-tls$([ "$PROTO" = h2 ] && echo -h2)} # raw outputs, runs.tsv, memory.tsv, table.md (git-ignored)
H2_STREAMS=${H2_STREAMS:-10}
DUR=${DUR:-10}
WARM=${WARM:-2}
REPS=${REPS:-3}
CONNS=${CONNS:-50}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
ORIGIN_CPU=${ORIGIN_CPU:-1}
P_ORIGIN=9200 P_DIRECT=9210 P_NGINX=9211 P_HAPROXY=9212 P_BLITZ=9213
# Blitz's idle-connection cap per upstream (`pool max-idle`). It is a
# strict cap: a connection coming back to a full pool is closed. h2load
# keeps CONNS x H2_STREAMS = 500 requests in flight, so a cap under 500
# opens and closes upstream connections on every burst; 512 is the
# setting an operator would pick for that load. (haproxy's
# `pool-max-conn 256` did not act as such a cap here: 500 established
# upstream connections and ~2 % new ones per request, measured with ss and
# nstat; nginx: `keepalive 128`.) BLITZ_POOL=256 shows the shedding case.
BLITZ_POOL=${BLITZ_POOL:-512}

cd "$DIR"
mkdir -p "$RUN/tmp" "$RUN/tls" "$RES"
rm -f "$RES"/*.txt "$RES"/runs.tsv "$RES"/memory.tsv

# Shared helpers: log, priority, server start/stop, sanity checks, CPU/RSS sampling.
source "$DIR/lib.sh"

# ---------------------------------------------------------------- tools
if [ -z "${SKIP_INSTALL:-}" ]; then
    "$REPO/scripts/install-test-deps.sh" || { log "installing dependencies failed"; exit 1; }
fi
for t in nginx haproxy wrk h2load taskset curl openssl; do
    command -v $t >/dev/null || { log "missing $t (scripts/install-test-deps.sh)"; exit 1; }
done

# ---------------------------------------------------------------- blitz binary
if [ -n "${BLITZ_BIN:-}" ]; then
    BIN=$BLITZ_BIN
else
    TD=${CARGO_TARGET_DIR:-$REPO/target}
    log "cargo build --release -p blitz-runtime --features tls,h2,mimalloc --example hello_gateway (target dir $TD)"
    ( cd "$REPO" && CARGO_TARGET_DIR=$TD timeout 1800 cargo build --release -q -p blitz-runtime --features tls,h2,mimalloc --example hello_gateway ) \
        >"$RUN/blitz-build.log" 2>&1 || { log "build failed; see $RUN/blitz-build.log"; tail -n 20 "$RUN/blitz-build.log" >&2; exit 1; }
    BIN=$TD/release/examples/hello_gateway
fi
[ -x "$BIN" ] || { log "no executable at $BIN"; exit 1; }

# ---------------------------------------------------------------- TLS material
if [ ! -s "$RUN/tls/combined.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
        -keyout "$RUN/tls/key.pem" -out "$RUN/tls/cert.pem" 2>/dev/null
    cat "$RUN/tls/cert.pem" "$RUN/tls/key.pem" > "$RUN/tls/combined.pem"
fi

# ---------------------------------------------------------------- priority, fds, servers
bench_priority_and_fds
ports_free $P_ORIGIN $P_DIRECT $P_NGINX $P_HAPROXY $P_BLITZ || exit 1

log "starting servers"
start origin  $ORIGIN_CPU nginx -p "$DIR/" -c conf/nginx-origin-tls.conf -e run/nginx-origin-tls.err -g 'daemon off;'
start nginx   $PROXY_CPU  nginx -p "$DIR/" -c conf/nginx-proxy-tls.conf -e run/nginx-proxy-tls.err -g 'daemon off;'
start haproxy $PROXY_CPU  haproxy -db -f conf/haproxy-proxy-tls.cfg
start blitz   $PROXY_CPU  "$BIN" --listen 127.0.0.1:$P_BLITZ --upstream 127.0.0.1:$P_ORIGIN --workers 1 \
    --tls-cert "$RUN/tls/cert.pem" --tls-key "$RUN/tls/key.pem" --protocols h1,h2 \
    --pool-max-idle "$BLITZ_POOL"
ok=1
for pair in "origin $P_DIRECT" "nginx $P_NGINX" "haproxy $P_HAPROXY" "blitz $P_BLITZ"; do
    read -r n p <<<"$pair"
    wait_http "https://127.0.0.1:$p/" || { log "$n on :$p did not come up"; tail -n 5 "$RUN/$n.out" >&2; exit 1; }
    check_body "$n" "https://127.0.0.1:$p/" || ok=
done
[ -n "$ok" ] || { log "sanity check failed"; exit 1; }
BLITZ_DRIVER=$(grep -o 'driver=[a-z_]*' "$RUN/blitz.out" | head -1)

NGINX_WORKER=$(pgrep -P "${PIDS[nginx]}" | head -1)
ORIGIN_WORKER=$(pgrep -P "${PIDS[origin]}" | head -1)
proxy_pid() { case $1 in nginx) echo "$NGINX_WORKER" ;; haproxy) echo "${PIDS[haproxy]}" ;;
              blitz) echo "${PIDS[blitz]}" ;; *) echo "" ;; esac; }
port_of() { case $1 in direct) echo $P_DIRECT ;; nginx) echo $P_NGINX ;; haproxy) echo $P_HAPROXY ;;
            blitz) echo $P_BLITZ ;; esac; }

# ---------------------------------------------------------------- versions
{
    echo "date: $(date -u +%FT%TZ)"
    echo "kernel: $(uname -r)"
    echo "nproc: $(nproc); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "nginx: $(nginx -v 2>&1 | sed 's/.*version: //')"
    echo "haproxy: $(haproxy -v | head -1)"
    echo "wrk: $(wrk -v 2>&1 | head -1 | awk '{print $2}')"
    echo "blitz: $BIN ($BLITZ_DRIVER, --workers 1; git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo none)); $(rustc --version 2>/dev/null)"
    echo "openssl: $(openssl version)"
    echo "h2load: $(h2load --version 2>/dev/null | head -1)"
    echo "tls: all four over TLS (the client's OpenSSL picks the suite); certificate EC P-256 self-signed; PROTO=$PROTO (h2: -m$H2_STREAMS streams per connection)"
    echo "blitz pool: --pool-max-idle $BLITZ_POOL"
    echo "pinning: proxy CPU $PROXY_CPU, origin CPU $ORIGIN_CPU, wrk CPU $LOAD_CPU; nice $BENCH_NICE; DUR=${DUR}s WARM=${WARM}s REPS=$REPS CONNS=$CONNS"
} > "$RES/versions.txt"
cat "$RES/versions.txt" >&2

# ---------------------------------------------------------------- load runs
# load URL SECONDS OUTFILE [PID to sample RSS from mid-run] -> "rps p50ms p99ms errors rss_kib"
# PROTO=h1: wrk. PROTO=h2: h2load, time-bounded (-D), p50/p99 from its per-request
# log (3rd column, microseconds), as shared/bench-peers/run-peers.sh does.
load() {
    local url=$1 secs=$2 out=$3 pid=${4:-} rss=NaN reqlog=$RUN/h2load-req.log
    rm -f "$reqlog"
    if [ "$PROTO" = h2 ]; then
        taskset -c "$LOAD_CPU" timeout $((secs + 30)) h2load -t1 -c"$CONNS" -m"$H2_STREAMS" -D "$secs" \
            --log-file="$reqlog" "$url" >"$out" 2>&1 &
    else
        taskset -c "$LOAD_CPU" timeout $((secs + 20)) wrk -t1 -c"$CONNS" -d"${secs}s" --latency "$url" >"$out" 2>&1 &
    fi
    local w=$!
    if [ -n "$pid" ]; then sleep "$(awk -v s="$secs" 'BEGIN{print s/2}')"; rss=$(rss_kib "$pid"); fi
    wait "$w"
    local rps p50 p99 err
    if [ "$PROTO" = h2 ]; then
        rps=$(awk '/^finished in/{gsub(/,/,""); print $4}' "$out")
        err=$(awk '/^requests:/{print $10+$12+$14}' "$out")
        read -r p50 p99 <<<"$(awk '{print $3}' "$reqlog" 2>/dev/null | sort -n | awk '{a[NR]=$1} END{ if(NR==0){print "NaN NaN"; exit}
              i50=int(NR*0.50); if(i50<1)i50=1; i99=int(NR*0.99); if(i99<1)i99=1;
              printf "%.3f %.3f", a[i50]/1000, a[i99]/1000 }')"
        rm -f "$reqlog"
    else
        rps=$(awk '/^Requests\/sec:/{print $2}' "$out")
        p50=$(to_ms "$(awk '$1=="50%"{print $2}' "$out")")
        p99=$(to_ms "$(awk '$1=="99%"{print $2}' "$out")")
        err=$(awk '/Non-2xx/{n+=$NF} /Socket errors/{gsub(/,/,""); n+=$4+$6+$8+$10} END{print n+0}' "$out")
    fi
    echo "${rps:-0} ${p50:-NaN} ${p99:-NaN} ${err:-0} ${rss:-NaN}"
}

CONFIGS=(direct nginx haproxy blitz)
if [ -n "${ONLY:-}" ]; then
    sel=(); for c in "${CONFIGS[@]}"; do [[ " $ONLY " == *" $c "* ]] && sel+=("$c"); done; CONFIGS=("${sel[@]}")
fi

measure_all https

# ---------------------------------------------------------------- memory
{
    printf 'process\tpid\tVmRSS_KiB_after_load\tthreads\n'
    for c in nginx haproxy blitz; do
        p=$(proxy_pid "$c"); [ -n "$p" ] || continue
        printf '%s\t%s\t%s\t%s\n' "$c" "$p" "$(rss_kib "$p")" "$(ls /proc/$p/task 2>/dev/null | wc -l)"
    done
    printf 'origin-worker\t%s\t%s\t1\n' "$ORIGIN_WORKER" "$(rss_kib "$ORIGIN_WORKER")"
} > "$RES/memory.tsv"

# ---------------------------------------------------------------- summary
"$DIR/summarize-h1.sh" "$RES" > "$RES/table.md"
echo
cat "$RES/versions.txt"
echo
cat "$RES/table.md"
