#!/usr/bin/env bash
# Times `blitzc check` on a generated 5,000-route spec (parse, lower,
# validate, shadow analysis). Uses hyperfine when installed, else runs the
# check N times and prints the median.
#
#   bench/check-5000/run.sh [RUNS]     (default 20)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
runs="${1:-20}"
target="${CARGO_TARGET_DIR:-$root/target}"
spec="$(mktemp -d)/spec-5000.kdl"

cargo build --release -p blitzc --example check_phases --manifest-path "$root/Cargo.toml" >&2
cargo build --release -p blitzc --manifest-path "$root/Cargo.toml" >&2
blitzc="$target/release/blitzc"
python3 "$here/gen.py" 5000 >"$spec"
echo "spec: $spec ($(grep -c '^route ' "$spec") routes, $(wc -l <"$spec") lines)"

# The spec must check with exactly the shadowed routes reported.
set +e
"$blitzc" check --format github "$spec" >"$spec.out"
code=$?
set -e
echo "blitzc check exit $code; $(grep -c 'B050' "$spec.out" || true) shadowed routes reported"
grep -v 'B050' "$spec.out" | head -5 || true

if command -v hyperfine >/dev/null; then
    hyperfine --warmup 3 --runs "$runs" -i "$blitzc check $spec"
else
    times=()
    for _ in $(seq "$runs"); do
        start=$(date +%s%N)
        "$blitzc" check "$spec" >/dev/null || true
        end=$(date +%s%N)
        times+=($(( (end - start) / 1000 )))
    done
    sorted=($(printf '%s\n' "${times[@]}" | sort -n))
    median=${sorted[$(( runs / 2 ))]}
    echo "blitzc check, $runs runs: median $((median / 1000)).$(printf '%03d' $((median % 1000))) ms" \
        "(min $((sorted[0] / 1000)) ms, max $((sorted[runs - 1] / 1000)) ms)"
fi

# Where the time goes, in process (parse + lower, validation, shadow check).
"$target/release/examples/check_phases" "$spec" "$runs"
