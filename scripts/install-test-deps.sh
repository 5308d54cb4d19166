#!/usr/bin/env bash
# Install everything the end-to-end tests (tests/) and the benchmark (bench/) need
# on a fresh Debian machine. Idempotent and fast when everything is present:
# it only calls apt-get/pip for what is missing, and runs `apt-get update` only
# when an install fails (a fresh image often has no package lists).
#
#   scripts/install-test-deps.sh            # tests + bench
#   NO_BENCH=1 scripts/install-test-deps.sh  # tests only (skips nginx/haproxy/wrk)
set -euo pipefail

log() { printf 'install-test-deps: %s\n' "$*" >&2; }

# ---------------------------------------------------------------- apt
# command -> Debian package
declare -A APT_CMDS=(
    [curl]=curl
    [taskset]=util-linux
    [setsid]=util-linux
    [ss]=iproute2
    [pgrep]=procps
    [openssl]=openssl
    # HTTP/2 clients of tests/runtime/test_h2.py
    [nghttp]=nghttp2-client
    [h2load]=nghttp2-client
    # test_review_upgrade2_qa.py holds a handoff message with strace's fault injection
    [strace]=strace
    # test_docs_operations_audit_qa.py: the systemd unit run by hand (socket
    # activation), and a runaway command contained as nobody with a process limit
    [systemd-socket-activate]=systemd
    [unshare]=util-linux
    [setpriv]=util-linux
    [prlimit]=util-linux
)
if [ -z "${NO_BENCH:-}" ]; then
    APT_CMDS+=([wrk]=wrk [nginx]=nginx [haproxy]=haproxy)
fi
missing=()
for cmd in "${!APT_CMDS[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${APT_CMDS[$cmd]}")
done
# python3 itself (a pyenv/venv python is fine if already on PATH)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if ! python3 -m pip --version >/dev/null 2>&1; then missing+=(python3-pip); fi

if [ ${#missing[@]} -gt 0 ]; then
    # dedupe
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get -y -q install --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
        log "install failed; apt-get update and retry"
        apt-get update -q >/dev/null
        apt-get -y -q install --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # Debian's nginx/haproxy packages start system services on :80; the tests and
    # the bench run their own instances with their own configs, so stop them.
    for svc in nginx haproxy; do
        if printf '%s\n' "${missing[@]}" | grep -qx "$svc"; then
            (command -v systemctl >/dev/null && systemctl stop "$svc" 2>/dev/null) || \
                (command -v service >/dev/null && service "$svc" stop >/dev/null 2>&1) || true
        fi
    done
fi

# ---------------------------------------------------------------- pip
# python module -> pip requirement
declare -A PY_MODS=(
    [pytest]="pytest>=7"
    [pytest_timeout]="pytest-timeout"
    [h2]="h2>=4"
    [hyperframe]="hyperframe>=6"
    [hpack]="hpack>=4"
    [dnslib]="dnslib>=0.9"
)
# one interpreter start: print the requirement of every module that does not import
mapfile -t pymissing < <(python3 - "${!PY_MODS[@]}" <<'PY'
import importlib.util, sys
for m in sys.argv[1:]:
    if importlib.util.find_spec(m) is None:
        print(m)
PY
)
for i in "${!pymissing[@]}"; do pymissing[$i]=${PY_MODS[${pymissing[$i]}]}; done
if [ ${#pymissing[@]} -gt 0 ]; then
    log "pip install ${pymissing[*]}"
    if ! python3 -m pip install -q --disable-pip-version-check "${pymissing[@]}" 2>/tmp/pip-err.$$; then
        if grep -q externally-managed /tmp/pip-err.$$; then
            python3 -m pip install -q --disable-pip-version-check --break-system-packages "${pymissing[@]}"
        else
            cat /tmp/pip-err.$$ >&2; rm -f /tmp/pip-err.$$; exit 1
        fi
    fi
    rm -f /tmp/pip-err.$$
fi
log "ok"
