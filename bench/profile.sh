#!/usr/bin/env bash
# Per-request cost of a cache hit, for before/after comparisons of one change
# (bench/run.sh's req/s swing with the neighbours on a shared machine; these
# two measures swing far less):
#
#   bench/profile.sh cpu BIN [SECONDS]  CPU time of the proxy per request, from
#       /proc/PID/stat (user + system, and user alone), over a wrk -t1 -c32
#       cache-hit run; the proxy and the upstream on CPU 1, wrk and the mock AS
#       on CPU 0 (as bench/run.sh). Run it several times, alternating binaries.
#   bench/profile.sh ir BIN [SECONDS]   user-space instructions per request
#       (valgrind --tool=callgrind, counters zeroed after a warm-up), and the
#       callgrind file for callgrind_annotate. Repeatable whatever the machine
#       is doing; kernel time is not counted.
#   bench/profile.sh syscalls BIN [SECONDS]  system calls per request, by
#       name (strace -c -f on the proxy during the run; strace slows it, the
#       counts per request are what it is for).
#   bench/profile.sh bytes BIN [SECONDS]  reads and writes per request, by
#       system call and file descriptor kind, with the bytes each moved (strace
#       -f -e read/write families on the proxy: what it sends to the client
#       and to the upstream, header bytes included, and its log writes).
#   bench/profile.sh perf BIN [SECONDS]  where CPU 1's time goes: perf record
#       -C 1 during the run, reported by process (thread name) and binary
#       (kernel, the proxy, libc, vDSO); the upstream shares that CPU. The
#       perf file is kept for `perf report --sort sym`.
#
# BIN is a tokengate binary, `proxy` for `bench-tools proxy` (the bare
# hyper + hyper-util proxy: bench/run.sh's hyper-proxy row), `proxy-pool` for
# the same over tokengate's own upstream pool (the floor of the stack
# tokengate runs on), or `nginx` for
# nginx as a plain proxy_pass with upstream keep-alive (bench/run.sh's
# nginx-proxy row, one worker, run without a master process so that the
# measured PID is the worker; not for `ir`). Needs a release build of
# bench-tools (`cargo build --release --example bench-tools`), wrk, and
# valgrind, strace or perf for those modes. RUST_LOG (default info) applies
# to tokengate; CONNS (default 32; `ir` always uses 8) sets wrk's connections.
# UPSTREAM=nginx (default) or hyper: the origin, as bench/run.sh --upstream
# (nginx: one worker, `return 200`, no access log; hyper: bench-tools upstream).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODE=${1:?usage: bench/profile.sh cpu|ir|syscalls|bytes|perf BIN [SECONDS]} GATE=${2:?BIN}
SECS=${3:-4}
[[ ! ($MODE == ir && $GATE == nginx) ]] || { echo "bench/profile.sh: ir does not take nginx (see the header)" >&2; exit 2; }
TOOLS=${CARGO_TARGET_DIR:-target}/release/examples/bench-tools
[[ -x $TOOLS ]] || { echo "build bench-tools first: cargo build --release --example bench-tools" >&2; exit 2; }
TMP=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"' EXIT
UPP=$($TOOLS freeport) ASP=$($TOOLS freeport) TGP=$($TOOLS freeport)
. bench/gate-config.sh
if [[ ${UPSTREAM:-nginx} == nginx ]]; then
    mkdir -p "$TMP/upstream/logs"
    nginx_upstream_config "$TMP/upstream" "$UPP" >"$TMP/upstream/nginx.conf"
    taskset -c 1 "$(command -v nginx || echo /usr/sbin/nginx)" -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" \
        -e "$TMP/upstream/logs/error.log" >/dev/null 2>&1 & PIDS+=($!); UP=$!
else
    taskset -c 1 "$TOOLS" upstream "127.0.0.1:$UPP" >/dev/null 2>&1 & PIDS+=($!); UP=$!
fi
taskset -c 0 "$TOOLS" as "127.0.0.1:$ASP" 5 >/dev/null 2>&1 & PIDS+=($!)
write_gate_config "$TMP/c.toml" "$TGP" "http://127.0.0.1:$UPP" "http://127.0.0.1:$ASP"
if [[ $GATE == proxy || $GATE == proxy-pool ]]; then
    CMD=("$TOOLS" "$GATE" "127.0.0.1:$TGP" "http://127.0.0.1:$UPP")
elif [[ $GATE == nginx ]]; then
    mkdir -p "$TMP/nginx/logs"
    cat >"$TMP/nginx/nginx.conf" <<EOF
$(nginx_main "$TMP/nginx")
master_process off;
http {
$(nginx_http_common "$TMP/nginx" "$UPP")
$(nginx_plain_server "$TGP")
}
EOF
    CMD=("$(command -v nginx || echo /usr/sbin/nginx)" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/logs/error.log")
else
    CMD=("$GATE" --config "$TMP/c.toml")
fi
[[ $MODE == ir ]] && CMD=(valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.out" "${CMD[@]}")
RUST_LOG=${RUST_LOG:-info} taskset -c 1 "${CMD[@]}" >"$TMP/proxy.log" 2>&1 & PIDS+=($!); TG=$!
for _ in $(seq 200); do "$TOOLS" get "http://127.0.0.1:$TGP/" >/dev/null 2>&1 && break; sleep 0.1; done
CONNS=${CONNS:-32}; [[ $MODE == ir ]] && CONNS=8
load() { BENCH_TOKEN=profile-token taskset -c 0 wrk -t1 -c$CONNS -d"$1" -s bench/wrk.lua "http://127.0.0.1:$TGP/"; }
load 2s >/dev/null
ticks() { awk '{print $14 + $15, $14}' "/proc/$1/stat"; }
# Context switches of every thread of PID: voluntary (blocked, e.g. in
# epoll_wait) and involuntary (preempted, e.g. by the upstream on its CPU).
ctxsw() { cat /proc/"$1"/task/*/status | awk '/^voluntary_ctxt/ {v += $2} /^nonvoluntary_ctxt/ {n += $2} END {print v + 0, n + 0}'; }
case $MODE in
ir) callgrind_control -z "$TG" >/dev/null ;;
syscalls) strace -c -f -p "$TG" -o "$TMP/strace" 2>/dev/null & SPY=$! ;;
bytes) strace -f -qq -s 0 -e trace=read,write,readv,writev,recvfrom,sendto,recvmsg,sendmsg -p "$TG" -o "$TMP/strace" 2>/dev/null & SPY=$! ;;
perf) perf record -q -C 1 -o "${PERF_OUT:-/tmp/tokengate.perf}" 2>/dev/null & SPY=$! ;;
*) read -r t0 u0 < <(ticks "$TG"); read -r up0 _ < <(ticks "$UP")
   read -r v0 n0 < <(ctxsw "$TG"); read -r uv0 un0 < <(ctxsw "$UP") ;;
esac
[[ $MODE == syscalls || $MODE == bytes || $MODE == perf ]] && sleep 0.5 # attached before the load starts
out=$(load "${SECS}s")
req=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$out")
if [[ $MODE == syscalls || $MODE == bytes || $MODE == perf ]]; then
    kill -INT "$SPY"; wait "$SPY" 2>/dev/null || true
    echo "requests=$req (the counts run from attach to detach, a little longer than the load)"
    if [[ $MODE == syscalls ]]; then
        # strace -c columns: % time, seconds, usecs/call, calls, [errors,] name.
        awk -v r="$req" '$4 ~ /^[0-9]+$/ { printf "%-16s %7.3f per request\n", $NF, $4 / r }' "$TMP/strace"
    elif [[ $MODE == bytes ]]; then
        # Lines: `PID name(fd, ...) = N` (or split in `unfinished` and
        # `resumed` halves). Per call name: calls and bytes per request, and
        # the mean size of one call.
        awk -v r="$req" '
            /unfinished \.\.\.>$/ { next }
            { s = $0
              if (s ~ /<\.\.\. [a-z0-9]+ resumed>/) { sub(/.*<\.\.\. /, "", s); sub(/ resumed>.*/, "", s) }
              else { sub(/^[0-9]+ +/, "", s); sub(/\(.*/, "", s) }
              n[s]++; if ($NF + 0 > 0) b[s] += $NF }
            END { for (k in n) printf "%-10s %7.3f calls/request %8.1f bytes/request %8.1f bytes/call\n", k, n[k] / r, b[k] / r, b[k] / n[k] }' "$TMP/strace" | sort
    else
        perf report -i "${PERF_OUT:-/tmp/tokengate.perf}" --sort comm,dso --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -12
        echo "perf file: ${PERF_OUT:-/tmp/tokengate.perf}"
    fi
elif [[ $MODE == ir ]]; then
    callgrind_control -d "$TG" >/dev/null
    sleep 0.5
    f=$(ls -t "$TMP"/callgrind.out* | head -1)
    total=$(callgrind_annotate "$f" 2>/dev/null | sed -n 's/^\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
    cp "$f" "${CALLGRIND_OUT:-/tmp/tokengate.callgrind}"
    echo "requests=$req instructions_per_request=$((total / req)) callgrind=${CALLGRIND_OUT:-/tmp/tokengate.callgrind}"
else
    read -r t1 u1 < <(ticks "$TG"); read -r up1 _ < <(ticks "$UP")
    read -r v1 n1 < <(ctxsw "$TG"); read -r uv1 un1 < <(ctxsw "$UP")
    dur=$(sed -n 's/.*duration_us=\([0-9]*\).*/\1/p' <<<"$out")
    awk -v r="$req" -v d="$dur" -v t=$((t1 - t0)) -v u=$((u1 - u0)) -v up=$((up1 - up0)) -v hz="$(getconf CLK_TCK)" \
        -v cs="$((v1 - v0)) $((n1 - n0)) $((uv1 - uv0)) $((un1 - un0))" \
        'BEGIN { split(cs, c, " ")
                 printf "req_per_s=%.0f proxy_cpu_us_per_req=%.2f proxy_user_us_per_req=%.2f upstream_cpu_us_per_req=%.2f proxy_cs_per_req=%.3f/%.3f upstream_cs_per_req=%.3f/%.3f (voluntary/involuntary)\n", r / (d / 1e6), t / hz * 1e6 / r, u / hz * 1e6 / r, up / hz * 1e6 / r, c[1] / r, c[2] / r, c[3] / r, c[4] / r }'
fi
