#!/usr/bin/env bash
# bench/compiler/run.sh: the compiler's numbers, all in one run.
#
#   1. route decision time, compiled vs interpreted, 10..10,000 routes (criterion)
#   2. `blitzc build` with a warm cache: no change, and one response body changed
#      (quickstart and a 1,000-route spec; hyperfine, median of RUNS)
#   3. binary size: quickstart (h1 only) vs api.kdl (everything served today,
#      path-regex => `regex` feature), release and max, stripped and not
#   4. requests/s of the compiled gateway (release and max) vs `blitzc dev` on a 1,000-route spec
#      hitting a late route (wrk -t1 -c50, gateway on CPU 0, wrk on CPU 1,
#      interleaved A B C A B C ..., REPS rounds, medians)
#
# Usage:  bench/compiler/run.sh                      # everything, 7-12 min when caches are warm
#         ONLY="decide build size rps" bench/compiler/run.sh
# Env:    SIZES=10,100,1000,10000,1000api  specs of the decision benchmark
#                                   (`Napi`: N routes, every host-bound path under /api)
#         RUNS=3                    hyperfine runs per build measurement
#         DUR=5 REPS=5 CONNS=50     wrk seconds, interleaved repetitions, connections
#         RPS_SPECS="1000 10"       route counts of the requests/s test
#         RPS_KINDS="compiled compiled-max interpreted"  gateways of the requests/s test
#         PORT=9310                 listen port of the gateways under load
#         QUIET_PCT=15 QUIET_WAIT=10 before each wrk run, wait (at most QUIET_WAIT s)
#                                   for the box to be at most QUIET_PCT % busy
#         CARGO_TARGET_DIR=/work/target-bench   blitzc and the bench crates
#         BLITZ_CACHE_DIR=/work/blitz-cache-bench  generated crates + their target dir
# Output: bench/compiler/out/ (raw data, logs) and the tables on stdout
#         (summary.md); copy them into bench/RESULTS-compiler.md.
#
# Only processes this script starts are stopped, by PID. Load is on
# 127.0.0.1 only, and every wrk run is bounded by -d and `timeout`.
set -uo pipefail

DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$DIR/../.." && pwd)
# Own session: own scheduler autogroup, so BENCH_NICE is not diluted on a shared box.
if [ -z "${BENCH_SETSID:-}" ] && command -v setsid >/dev/null; then
    BENCH_SETSID=1 exec setsid "$0" "$@"
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}
export BLITZ_CACHE_DIR=${BLITZ_CACHE_DIR:-/work/blitz-cache-bench}
SIZES=${SIZES:-10,100,1000,10000,1000api}
RUNS=${RUNS:-3}
DUR=${DUR:-5}
REPS=${REPS:-5}
CONNS=${CONNS:-50}
RPS_SPECS=${RPS_SPECS:-1000 10}
PORT=${PORT:-9310}
# compiled = `blitzc build` (release profile of templates/Cargo.toml: no LTO, 16 CGUs),
# compiled-max = `--profile max`, interpreted = `blitzc dev` (blitzc's own release profile).
RPS_KINDS=${RPS_KINDS:-compiled compiled-max interpreted}
ONLY=${ONLY:-decide build size rps}
NICE=${BENCH_NICE:--15}
OUT=$DIR/out
SPECS=$OUT/specs
BLITZC=$CARGO_TARGET_DIR/release/blitzc
mkdir -p "$OUT" "$SPECS" "$OUT/bin"
START=$(date +%s)

log() { echo "[$(date +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" >&2; }
want() { [[ " $ONLY " == *" $1 "* ]]; }
die() { log "error: $*"; exit 1; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; }
trap cleanup EXIT

for tool in cargo python3 hyperfine wrk taskset strip curl; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install hyperfine wrk curl binutils)"
done

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) CPUs)"
    echo "kernel: $(uname -r)"
    echo "rustc: $(rustc --version)"
    echo "memory: $(free -g | awk '/Mem:/{print $2}') GiB"
    echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "commit: $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet || echo ' + uncommitted changes')"
} > "$OUT/machine.txt"
log "machine: $(tr '\n' ';' < "$OUT/machine.txt")"

log "building blitzc (release) into $CARGO_TARGET_DIR"
cargo build --release -q -p blitzc --manifest-path "$REPO/Cargo.toml" || die "blitzc does not build"

log "generating specs ($SIZES routes)"
python3 "$DIR/gen_specs.py" "$SPECS" "$SIZES,$(echo $RPS_SPECS | tr ' ' ',')" || die "spec generator failed"

# ---------------------------------------------------------------- 1. decide
if want decide; then
    log "decide: generating gateways with blitzc (prep)"
    specs=()
    for n in ${SIZES//,/ }; do specs+=("$SPECS/routes-$n.kdl"); done
    mkdir -p "$DIR/decide/src/gateways"
    cargo run --release -q --manifest-path "$DIR/Cargo.toml" -p blitz-bench-prep -- "$DIR/decide/src/gateways" "${specs[@]}" \
        2> >(tee "$OUT/prep.log" >&2) || die "prep failed"
    log "decide: compiling the benchmark (every generated gateway in one crate, bench profile = gateway release profile)"
    t0=$(date +%s.%N)
    cargo bench --no-run -q --manifest-path "$DIR/Cargo.toml" -p blitz-bench-decide 2>&1 | tail -5 >&2
    t1=$(date +%s.%N)
    echo "$t0 $t1" | awk '{printf "%.1f\n", $2-$1}' > "$OUT/decide-compile-s.txt"
    log "decide: compiled in $(cat "$OUT/decide-compile-s.txt") s; running criterion"
    rm -rf "$OUT/criterion"
    BLITZ_BENCH_SAMPLES=$SPECS CRITERION_HOME=$OUT/criterion \
        nice -n "$NICE" taskset -c 0 cargo bench -q --manifest-path "$DIR/Cargo.toml" -p blitz-bench-decide \
        > "$OUT/decide.log" 2>&1 || { tail -30 "$OUT/decide.log" >&2; die "decision benchmark failed"; }
    grep '^decide:' "$OUT/decide.log" >&2
fi

# ---------------------------------------------------------------- 2. build
# bump FILE: changes the body of the spec's first `respond` (a new number each call).
cat > "$OUT/bump.sh" <<'BUMP'
#!/usr/bin/env bash
f=$1; n=$(cat "$f.n" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$f.n"
python3 - "$f" "$n" <<'PY'
import re, sys
f, n = sys.argv[1], sys.argv[2]
s = open(f).read()
s = re.sub(r'(respond \d+ body=")([^"]*?)( #\d+)?(\\n)?"', lambda m: f'{m[1]}{m[2]} #{n}{m[4] or ""}"', s, count=1)
open(f, "w").write(s)
PY
BUMP
chmod +x "$OUT/bump.sh"

if want build; then
    cp "$REPO/examples/quickstart.kdl" "$SPECS/quickstart.kdl"
    for s in quickstart routes-1000; do
        spec=$SPECS/$s.kdl
        log "build: $s: first build (primes the cache: runtime + deps, untimed)"
        "$BLITZC" build "$spec" -o "$OUT/bin/$s" 2> "$OUT/build-$s-prime.log" || { tail "$OUT/build-$s-prime.log" >&2; die "build of $s failed"; }
        log "build: $s: warm, nothing changed"
        hyperfine -N --runs "$RUNS" --warmup 1 --export-json "$OUT/build-$s-nochange.json" \
            "$BLITZC build $spec -o $OUT/bin/$s" > "$OUT/build-$s-nochange.txt" 2>&1 || die "hyperfine failed"
        log "build: $s: warm, one response body changed before each run"
        hyperfine -N --runs "$RUNS" --prepare "$OUT/bump.sh $spec" --export-json "$OUT/build-$s-body.json" \
            "$BLITZC build $spec -o $OUT/bin/$s" > "$OUT/build-$s-body.txt" 2>&1 || die "hyperfine failed"
    done
fi

# ---------------------------------------------------------------- 3. size
if want size; then
    cp "$REPO/examples/quickstart.kdl" "$SPECS/quickstart.kdl"
    cp "$REPO/examples/api.kdl" "$SPECS/api.kdl"
    : > "$OUT/size.tsv"
    for s in quickstart api routes-1000; do
        for p in release max; do
            [ "$s" = routes-1000 ] && [ "$p" = max ] && continue
            log "size: $s --profile $p"
            bin=$OUT/bin/$s-$p
            t0=$(date +%s.%N)
            "$BLITZC" build "$SPECS/$s.kdl" --profile "$p" -o "$bin" 2> "$OUT/size-$s-$p.log" || { tail "$OUT/size-$s-$p.log" >&2; die "build failed"; }
            t1=$(date +%s.%N)
            strip -o "$bin.stripped" "$bin"
            printf '%s\t%s\t%s\t%s\t%s\n' "$s" "$p" "$(stat -c %s "$bin")" "$(stat -c %s "$bin.stripped")" \
                "$(echo "$t0 $t1" | awk '{printf "%.1f", $2-$1}')" >> "$OUT/size.tsv"
        done
    done
fi

# ---------------------------------------------------------------- 4. rps
wait_port() { for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && return 0; sleep 0.1; done; return 1; }
start_gw() { # start_gw KIND N -> sets GW_PID
    local kind=$1 n=$2
    if [ "$kind" = compiled ]; then
        nice -n "$NICE" taskset -c 0 "$OUT/bin/rps-$n" --workers 1 > "$OUT/rps-$kind-$n.server.log" 2>&1 &
    elif [ "$kind" = compiled-max ]; then
        nice -n "$NICE" taskset -c 0 "$OUT/bin/rps-$n-max" --workers 1 > "$OUT/rps-$kind-$n.server.log" 2>&1 &
    else
        nice -n "$NICE" taskset -c 0 "$BLITZC" dev "$SPECS/routes-$n.kdl" -- --workers 1 > "$OUT/rps-$kind-$n.server.log" 2>&1 &
    fi
    GW_PID=$!
    PIDS+=("$GW_PID")
    wait_port || die "$kind gateway ($n routes) did not start: $(tail -3 "$OUT/rps-$kind-$n.server.log")"
}
stop_gw() { kill "$GW_PID" 2>/dev/null; wait "$GW_PID" 2>/dev/null; }
# Busy % of the whole box over one second (other tenants: this box is shared).
busy_pct() {
    local a b
    a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat); sleep 1
    b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
    echo "$a $b" | awk '{t=$4-$2; printf "%d", (t>0 ? 100*($3-$1)/t : 0)}'
}
# wait_quiet -> prints the busy % it settled for (bounded by QUIET_WAIT seconds).
wait_quiet() {
    local waited=0 busy
    while :; do
        busy=$(busy_pct)
        [ "$busy" -le "${QUIET_PCT:-15}" ] && break
        waited=$((waited + 1))
        [ "$waited" -ge "${QUIET_WAIT:-10}" ] && break
    done
    echo "$busy"
}

if want rps; then
    printf 'routes\tkind\trep\trps\tp50\tp99\tnon2xx\tload1\tbusy_before\n' > "$OUT/rps.tsv"
    for n in $RPS_SPECS; do
        log "rps: building the $n-route gateway"
        "$BLITZC" build "$SPECS/routes-$n.kdl" -o "$OUT/bin/rps-$n" 2> "$OUT/rps-build-$n.log" || die "build failed"
        "$BLITZC" build "$SPECS/routes-$n.kdl" --profile max -o "$OUT/bin/rps-$n-max" 2>> "$OUT/rps-build-$n.log" || die "build failed"
        read -r method host path name index < "$SPECS/late-$n.txt"
        url="http://127.0.0.1:$PORT$path"
        for kind in $RPS_KINDS; do   # all must serve the late route
            start_gw "$kind" "$n"
            got=$(curl -s -H "Host: $host" "$url")
            stop_gw
            [ "$got" = "$name" ] || die "$kind gateway answered '$got' for route $name"
        done
        log "rps: $n routes, request for route #$index '$name' (Host: $host, $path)"
        for rep in $(seq "$REPS"); do
            for kind in $RPS_KINDS; do
                quiet=$(wait_quiet)
                start_gw "$kind" "$n"
                taskset -c 1 timeout 10 wrk -t1 -c"$CONNS" -d1s -H "Host: $host" "$url" > /dev/null 2>&1  # warm-up
                load1=$(cut -d' ' -f1 /proc/loadavg)
                o=$OUT/rps-$kind-$n-$rep.txt
                nice -n "$NICE" taskset -c 1 timeout $((DUR + 20)) wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -H "Host: $host" "$url" > "$o" 2>&1
                stop_gw
                rps=$(awk '/^Requests\/sec/{print $2}' "$o")
                p50=$(awk '$1=="50%"{print $2}' "$o")
                p99=$(awk '$1=="99%"{print $2}' "$o")
                non=$(awk '/Non-2xx/{print $NF}' "$o"); non=${non:-0}
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$kind" "$rep" "$rps" "$p50" "$p99" "$non" "$load1" "$quiet" >> "$OUT/rps.tsv"
                log "rps: $n routes rep $rep $kind: $rps req/s p50 $p50 p99 $p99 non-2xx $non (load $load1, box ${quiet}% busy before)"
            done
        done
    done
fi

echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/machine.txt"
echo "total: $(( $(date +%s) - START )) s" >> "$OUT/machine.txt"
python3 "$DIR/summarize.py" "$OUT" | tee "$OUT/summary.md"
log "done in $(( $(date +%s) - START )) s; raw data in $OUT"
