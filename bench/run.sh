#!/usr/bin/env bash
# tokengate benchmark harness: one command, one run, one table.
#
#   bench/run.sh            full run (release build), writes BENCHMARKS.md
#   bench/run.sh --smoke    a few seconds, dev build, small counts; checks only
#                           that the harness works and that every new token is
#                           introspected exactly once (CI runs this)
#   bench/run.sh --rounds 3 the lead's run: every row three times, interleaved
#                           round by round (~10 minutes on 2 CPUs, plus the
#                           release build when it is not there yet)
#
# Options: --upstream nginx|hyper  the origin behind every proxy (nginx, the
#                                default: one nginx worker answering a fixed
#                                `200 ok` from memory, no access log; hyper:
#                                bench-tools upstream, a one-thread hyper
#                                server). Without nginx installed, --smoke
#                                falls back to hyper (a full run installs it)
#          --rounds N            run the rows N times, round by round (each
#                                round every row once, in the same order);
#                                the table gives each row's median req/s and
#                                its min-max, the medians of p50/p99, and every
#                                ratio computed per round, then medianed. The
#                                signed rows (jwt-new, dpop) run in round 1
#                                only: signing their inputs takes ~25 s each
#          --workers LIST        comma-separated worker counts (default 1,2
#                                for a full run, capped at the CPU count; 1 for
#                                --smoke). 1 is the default layout above (the
#                                targets' layout). Each N > 1 adds three rows,
#                                no access log in any: nginx-proxy-nolog-wN
#                                (worker_processes N), hyper-proxy-wN and
#                                tokengate-hit-nolog-wN (N tokio workers,
#                                TOKIO_WORKER_THREADS), each proxy on CPUs
#                                0..N-1, the upstream where it was
#          --duration SECS (10)  --warmup SECS (3)  --connections N (32)
#          --latency-ms MS (5)   --no-nginx  --no-mem  --no-write
#          --as-sleep precise|tokio  how the mock AS waits (precise: a timer
#                                thread, held = the latency to ~0.1 ms; tokio:
#                                tokio's 1 ms wheel, held 5-6 ms for "5 ms")
#          --njs fetch|subrequest    how nginx-auth-request's njs handler calls
#                                the AS (fetch: ngx.fetch, a new connection per
#                                introspection; subrequest: r.subrequest to a
#                                proxy_pass location with keep-alive)
#          --mem-counts N,N,...  (10000,100000,1000000)
#          --gate-bin PATH       measure this tokengate binary instead of the
#                                one just built (before/after comparisons)
#          --upstream-cpu 0|1    where the upstream runs (1: with the proxy
#                                under test, the default; 0: with wrk and
#                                the AS, so the proxy has CPU 1 to itself)
#
# What it measures, in this order, with the same wrk settings each time
# (wrk -t1 -cN; with >= 2 CPUs, wrk and the mock AS, an outside service, are
# pinned to CPU 0, the upstream and the proxy under test to CPU 1):
#   direct              wrk -> upstream
#   nginx-proxy         wrk -> nginx (plain proxy_pass, no auth) -> upstream;
#                       access_log on (to a file)
#   nginx-proxy-nolog   the same nginx server with `access_log off`
#   hyper-proxy         wrk -> bench-tools proxy (hyper server + hyper-util
#                       pooled client, no auth, no header work, no log) ->
#                       upstream: a plain hyper proxy (tokengate's own pool
#                       is cheaper: `bench/profile.sh cpu proxy-pool`)
#   tokengate-hit       wrk -> tokengate -> upstream; one token, cached; the
#                       access log on (the default), to a file
#   tokengate-hit-nolog the same with `log.access = false` (a second process)
# Cache-hit ratios compare like with like: tokengate-hit (and the signed rows)
# against nginx-proxy, tokengate-hit-nolog and hyper-proxy against
# nginx-proxy-nolog.
#   tokengate-jwt-new   wrk -> a second tokengate with [jwt] on -> upstream; a
#                       new ES256 JWT access token (RFC 9068) per request,
#                       checked locally with the mock AS's /jwks: no AS call
#                       (checked: 0 introspections)
#   tokengate-jwt-new-rs256  the same with RS256 tokens; a shorter row (as
#                       long as ~90 s of RSA signing covers, at most the
#                       duration): RSA signing is ~30x slower than ES256
#   tokengate-dpop      wrk -> the same second tokengate -> upstream; one
#                       DPoP-bound token (cnf.jkt), cached, and a new DPoP
#                       proof (RFC 9449) per request: a cache hit plus the
#                       proof check. Tokens and proofs are signed before the
#                       row by bench-tools (jwt-tokens, dpop-proofs), sized
#                       to twice the tokengate-hit rate, and read one a
#                       request by wrk.lua (BENCH_TOKEN_MODE=file); a line
#                       short is a 401 and fails the run
#   nginx-auth-request-lite  wrk -> nginx auth_request (GET /auth on the mock
#                       AS, keep-alive, no introspection: the AS just answers
#                       200 after 5 ms, no body, no client auth, no JSON) ->
#                       upstream; a new token per request. No real RFC 7662
#                       deployment can work this way: the least work any
#                       auth_request set-up does per request, shown so
#                       nothing is hidden
#   nginx-auth-request  wrk -> nginx auth_request -> njs (js_content,
#                       bench/introspect.js: ngx.fetch POST /introspect, form
#                       body, HTTP Basic, JSON "active") -> upstream; no cache;
#                       a new token per request. The baseline of issue 6
#                       ("nginx auth_request + njs"). Needs the njs module
#                       (Debian libnginx-mod-http-js: a full run installs it
#                       when missing, --smoke skips the row)
#   authz-load          bench-tools -> tokengate as an authorizer: gRPC
#                       ext_authz Check vs HTTP forward-auth, cache hit
#                       (after the wrk rows; printed below the table)
#   tokengate-miss      wrk -> tokengate (POST /introspect on the mock AS,
#                       5 ms) -> upstream; a new token per request
# The miss rows' "vs nginx" is against nginx-auth-request; a note under the
# table gives tokengate-miss against nginx-auth-request-lite, and the bound
# connections / latency that no proxy can pass. Before the load, tokengate and
# both auth_request servers must answer 401 without a token and for a token
# the AS calls inactive, and 200 for an active one.
# then: 1000 concurrent requests with one new token (must be 1 introspection),
# exec-to-first-200 time and idle RSS of the tokengate binary, and cache RSS per
# entry (bench-tools mem), and moka's own floor per entry (mem ... moka-unit).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
COMMAND="bench/run.sh${*:+ $*}"

SMOKE=0 DURATION=10 WARMUP=3 CONNS=32 LATENCY_MS=5 NGINX=1 MEM=1 WRITE=1
MEM_COUNTS=10000,100000,1000000 BURST=1000 GATE_BIN="" AS_SLEEP=precise NJS_CALL=fetch UP_CPU=1
UPSTREAM_KIND=nginx ROUNDS=1 WORKERS=""
while (($#)); do
    case $1 in
    --smoke) SMOKE=1 DURATION=1 WARMUP=1 MEM_COUNTS=10000 WRITE=0 ;;
    --upstream) UPSTREAM_KIND=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --workers) WORKERS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --connections) CONNS=$2; shift ;;
    --latency-ms) LATENCY_MS=$2; shift ;;
    --as-sleep) AS_SLEEP=$2; shift ;;
    --njs) NJS_CALL=$2; shift ;;
    --mem-counts) MEM_COUNTS=$2; shift ;;
    --no-nginx) NGINX=0 ;;
    --gate-bin) GATE_BIN=$2; shift ;;
    --upstream-cpu) UP_CPU=$2; shift ;;
    --no-mem) MEM=0 ;;
    --no-write) WRITE=0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "bench/run.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench/run.sh: %s\n' "$*" >&2; exit 1; }
[[ $NJS_CALL == fetch || $NJS_CALL == subrequest ]] || die "--njs: fetch or subrequest, not $NJS_CALL"
[[ $AS_SLEEP == precise || $AS_SLEEP == tokio ]] || die "--as-sleep: precise or tokio, not $AS_SLEEP"
[[ $UP_CPU == [01] ]] || die "--upstream-cpu: 0 or 1, not $UP_CPU"
[[ $UPSTREAM_KIND == nginx || $UPSTREAM_KIND == hyper ]] || die "--upstream: nginx or hyper, not $UPSTREAM_KIND"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds: a positive number, not $ROUNDS"
if [[ -z $WORKERS ]]; then
    WORKERS=1
    ((SMOKE)) || WORKERS=1,2
fi
[[ $WORKERS =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "--workers: a comma-separated list of counts, not $WORKERS"
# Worker counts beyond the machine's CPUs are dropped: "more" means all of them.
WLIST=()
for w in ${WORKERS//,/ }; do
    if ((w > $(nproc))); then
        printf '==> %s\n' "--workers: $w is more than this machine's $(nproc) CPUs, skipped" >&2
    elif ((w > 1)); then
        WLIST+=("$w")
    fi
done

# --- tools ------------------------------------------------------------------
# wrk: in Debian (seconds to install), and its Lua hook can send a new token on
# every request, which the cache-miss scenario needs.
apt_install() {
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
command -v wrk >/dev/null || { say "installing wrk"; apt_install wrk || die "cannot install wrk"; }
NGINX_BIN=""
# The nginx upstream needs nginx even with --no-nginx (no nginx baselines).
if ((NGINX)) || [[ $UPSTREAM_KIND == nginx ]]; then
    NGINX_BIN=$(command -v nginx || true)
    if [[ -z $NGINX_BIN && -x /usr/sbin/nginx ]]; then NGINX_BIN=/usr/sbin/nginx; fi
    if [[ -z $NGINX_BIN ]] && ((SMOKE)); then
        say "nginx is not installed: the smoke run skips the nginx baselines"
    elif [[ -z $NGINX_BIN ]]; then
        say "installing nginx (for the baselines)"
        apt_install nginx || say "cannot install nginx: skipping the nginx baselines"
        NGINX_BIN=$(command -v nginx || ls /usr/sbin/nginx 2>/dev/null || true)
    fi
fi
if [[ $UPSTREAM_KIND == nginx && -z $NGINX_BIN ]]; then
    ((SMOKE)) || die "--upstream nginx: nginx is not installed (or run with --upstream hyper)"
    say "nginx is not installed: the smoke run uses the hyper upstream"
    UPSTREAM_KIND=hyper
fi
UPSTREAM_NGINX_BIN=$NGINX_BIN
((NGINX)) || NGINX_BIN=""
# njs, for the nginx-auth-request row (the issue's baseline). Debian's module
# package must match the nginx package's ABI, which apt resolves.
NJS_MODULE=/usr/lib/nginx/modules/ngx_http_js_module.so
NJS=0 NJS_WHY="nginx is not run"
if [[ -n $NGINX_BIN ]]; then
    NJS_WHY="the njs module is missing"
    if [[ ! -f $NJS_MODULE ]] && ((SMOKE)); then
        say "the nginx njs module is not installed: the smoke run skips nginx-auth-request"
    elif [[ ! -f $NJS_MODULE ]]; then
        say "installing libnginx-mod-http-js (njs, for nginx-auth-request)"
        apt_install libnginx-mod-http-js || say "cannot install the njs module: skipping nginx-auth-request"
    fi
    [[ ! -f $NJS_MODULE ]] || NJS=1
fi

TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
if ((SMOKE)); then
    say "building (dev profile)"
    cargo build --quiet --bin tokengate --example bench-tools
    BIN=$TARGET_DIR/debug
else
    say "building (release profile)"
    cargo build --quiet --release --bin tokengate --example bench-tools
    BIN=$TARGET_DIR/release
fi
TOOLS=$BIN/examples/bench-tools
GATE=${GATE_BIN:-$BIN/tokengate}

# --- pinning ----------------------------------------------------------------
LG=() SV=() UPS=()
if (($(nproc) >= 2)) && command -v taskset >/dev/null; then
    LG=(taskset -c 0) SV=(taskset -c 1) UPS=(taskset -c "$UP_CPU")
    if ((UP_CPU)); then
        PINNING="wrk and the mock AS on CPU 0; upstream and the proxy under test on CPU 1"
    else
        PINNING="wrk, the mock AS and the upstream on CPU 0; the proxy under test on CPU 1"
    fi
else
    PINNING="not pinned ($(nproc) CPU)"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tokengate-bench.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

port() { "$TOOLS" freeport; }
wait_http() { # URL: until it answers 200 (5 s)
    local i
    for ((i = 0; i < 250; i++)); do
        "$TOOLS" get "$1" >/dev/null 2>&1 && return 0
        sleep 0.02
    done
    die "$1 did not come up; logs in $TMP"
}
rss_kib() { # PID...: summed VmRSS
    local total=0 pid kib
    for pid in "$@"; do
        kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}
kv() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p" <<<"$2" | head -1; }

UP_PORT=$(port) AS_PORT=$(port) TG_PORT=$(port) HP_PORT=$(port) JO_PORT=$(port)
UP=http://127.0.0.1:$UP_PORT AS=http://127.0.0.1:$AS_PORT TG=http://127.0.0.1:$TG_PORT
JO=http://127.0.0.1:$JO_PORT

. bench/gate-config.sh
say "starting upstream ($UPSTREAM_KIND), mock AS (${LATENCY_MS} ms, $AS_SLEEP sleep), tokengate"
if [[ $UPSTREAM_KIND == nginx ]]; then
    mkdir -p "$TMP/upstream/logs"
    nginx_upstream_config "$TMP/upstream" "$UP_PORT" >"$TMP/upstream/nginx.conf"
    "${UPS[@]}" "$UPSTREAM_NGINX_BIN" -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" \
        -e "$TMP/upstream/logs/error.log" >"$TMP/upstream.log" 2>&1 &
    UPSTREAM_DESC="nginx (one worker, \`return 200\`, no access log)"
else
    "${UPS[@]}" "$TOOLS" upstream "127.0.0.1:$UP_PORT" >"$TMP/upstream.log" 2>&1 &
    UPSTREAM_DESC="bench-tools upstream (one-thread hyper)"
fi
UP_PID=$!; PIDS+=("$UP_PID")
# The AS is an outside service: it shares the load generator's CPU, so its own
# work (parsing, JSON) is not charged to the proxy under test.
"${LG[@]}" "$TOOLS" as "127.0.0.1:$AS_PORT" "$LATENCY_MS" "$AS_SLEEP" >"$TMP/as.log" 2>&1 &
AS_PID=$!; PIDS+=("$AS_PID")
"${SV[@]}" "$TOOLS" proxy "127.0.0.1:$HP_PORT" "$UP" >"$TMP/hyper-proxy.log" 2>&1 &
HP_PID=$!; PIDS+=("$HP_PID")

write_gate_config "$TMP/tokengate.toml" "$TG_PORT" "$UP" "$AS"
# Default log level (info): one access log line per request, to a file, like nginx's access_log.
"${SV[@]}" "$GATE" --config "$TMP/tokengate.toml" >"$TMP/tokengate.log" 2>&1 &
TG_PID=$!; PIDS+=("$TG_PID")
# The same gate with `log.access = false`, against nginx's `access_log off`.
TN_PORT=$(port) TN=""
TN=http://127.0.0.1:$TN_PORT
write_gate_config "$TMP/tokengate-nolog.toml" "$TN_PORT" "$UP" "$AS"
printf '[log]\naccess = false\n' >>"$TMP/tokengate-nolog.toml"
"${SV[@]}" "$GATE" --config "$TMP/tokengate-nolog.toml" >"$TMP/tokengate-nolog.log" 2>&1 &
TN_PID=$!; PIDS+=("$TN_PID")
# --workers N > 1: the bare proxy and the gate (no access log) with N workers
# on CPUs 0..N-1; nginx's N-worker server is started with the others below.
declare -A WURL WPID
for w in "${WLIST[@]}"; do
    WCPU=(taskset -c "0-$((w - 1))")
    [[ ${#SV[@]} -gt 0 ]] || WCPU=()
    p=$(port)
    BENCH_WORKERS=$w "${WCPU[@]}" "$TOOLS" proxy "127.0.0.1:$p" "$UP" >"$TMP/hyper-proxy-w$w.log" 2>&1 &
    WPID[hyper-proxy-w$w]=$!; PIDS+=($!); WURL[hyper-proxy-w$w]=http://127.0.0.1:$p/
    p=$(port)
    write_gate_config "$TMP/tokengate-w$w.toml" "$p" "$UP" "$AS"
    printf '[log]\naccess = false\n' >>"$TMP/tokengate-w$w.toml"
    TOKIO_WORKER_THREADS=$w "${WCPU[@]}" "$GATE" --config "$TMP/tokengate-w$w.toml" >"$TMP/tokengate-w$w.log" 2>&1 &
    WPID[tokengate-hit-nolog-w$w]=$!; PIDS+=($!); WURL[tokengate-hit-nolog-w$w]=http://127.0.0.1:$p/
done
wait_http "$UP/"
wait_http "$AS/stats"
# The JWT and DPoP rows' gate: the same config plus [jwt] and [dpop]. Started
# after the AS, so its first JWKS fetch finds the keys.
write_jose_config "$TMP/jose.toml" "$JO_PORT" "$UP" "$AS"
"${SV[@]}" "$GATE" --config "$TMP/jose.toml" >"$TMP/jose.log" 2>&1 &
JO_PID=$!; PIDS+=("$JO_PID")
wait_http "$JO/public"
wait_http "http://127.0.0.1:$HP_PORT/"
wait_http "$TG/public"
wait_http "$TN/public"
for w in "${WLIST[@]}"; do
    wait_http "${WURL[hyper-proxy-w$w]}"
    wait_http "${WURL[tokengate-hit-nolog-w$w]}public"
done

NGINX_PIDS=()
if [[ -n $NGINX_BIN ]]; then
    NGX_PLAIN_PORT=$(port) NGX_NOLOG_PORT=$(port) NGX_LITE_PORT=$(port) NGX_NJS_PORT=$(port)
    mkdir -p "$TMP/nginx/logs"
    NJS_LOAD="" NJS_IMPORT="" NJS_SERVER=""
    if ((NJS)); then
        NJS_LOAD="load_module $NJS_MODULE;"
        NJS_IMPORT="js_import introspect from $REPO/bench/introspect.js;"
        # The issue's baseline: auth_request -> njs -> RFC 7662 introspection
        # (bench/introspect.js), no cache. The upstream side keeps its
        # connections alive as in the other rows. --njs subrequest: the
        # handler calls the AS through /_introspect_send instead of ngx.fetch
        # (nginx's own published pattern, here with keep-alive to the AS).
        NJS_FN=introspect
        [[ $NJS_CALL == fetch ]] || NJS_FN=introspect_subrequest
        BASIC=$(printf '%s' "nginx:bench-secret" | base64)
        NJS_SERVER="
    server {
        listen 127.0.0.1:$NGX_NJS_PORT;
        location / {
            auth_request /_introspect;
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
        location = /_introspect {
            internal;
            set \$oauth_introspection_url http://127.0.0.1:$AS_PORT/introspect;
            set \$oauth_client_id nginx;
            set \$oauth_client_secret bench-secret;
            js_content introspect.$NJS_FN;
        }
        location = /_introspect_send {
            internal;
            proxy_pass http://as/introspect;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_pass_request_headers off;
            proxy_set_header Authorization \"Basic $BASIC\";
            proxy_set_header Content-Type application/x-www-form-urlencoded;
        }
    }"
    fi
    # The plain and lite servers keep connections to the upstream and the AS
    # alive (keepalive + HTTP/1.1): the strongest common configuration, with
    # room for as many idle connections as the run has clients.
    NGX_IDLE=$((CONNS > 64 ? CONNS : 64))
    cat >"$TMP/nginx/nginx.conf" <<EOF
$NJS_LOAD
$(nginx_main "$TMP/nginx")
http {
$(nginx_http_common "$TMP/nginx" "$UP_PORT" "$NGX_IDLE")
    upstream as { server 127.0.0.1:$AS_PORT; keepalive $NGX_IDLE; }
    $NJS_IMPORT
$(nginx_plain_server "$NGX_PLAIN_PORT")
$(nginx_plain_server "$NGX_NOLOG_PORT" off)
    server {
        listen 127.0.0.1:$NGX_LITE_PORT;
        location / {
            auth_request /_auth;
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
        location = /_auth {
            internal;
            proxy_pass http://as/auth;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }$NJS_SERVER
}
EOF
    "${SV[@]}" "$NGINX_BIN" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/logs/error.log" \
        >"$TMP/nginx/stdout.log" 2>&1 &
    NGX_PID=$!; PIDS+=("$NGX_PID")
    wait_http "http://127.0.0.1:$NGX_PLAIN_PORT/"
    NGINX_PIDS=("$NGX_PID" $(pgrep -P "$NGX_PID" || true))
    # --workers N > 1: a plain nginx with N worker processes, no access log.
    for w in "${WLIST[@]}"; do
        d=$TMP/nginx-w$w p=$(port)
        mkdir -p "$d/logs"
        printf '%s\nhttp {\n%s\n%s\n}\n' "$(nginx_main "$d" "$w")" "$(nginx_http_common "$d" "$UP_PORT" "$NGX_IDLE")" \
            "$(nginx_plain_server "$p" off)" >"$d/nginx.conf"
        WCPU=(taskset -c "0-$((w - 1))")
        [[ ${#SV[@]} -gt 0 ]] || WCPU=()
        "${WCPU[@]}" "$NGINX_BIN" -p "$d" -c "$d/nginx.conf" -e "$d/logs/error.log" >"$d/stdout.log" 2>&1 &
        WPID[nginx-proxy-nolog-w$w]=$!; PIDS+=($!); WURL[nginx-proxy-nolog-w$w]=http://127.0.0.1:$p/
        wait_http "http://127.0.0.1:$p/"
    done
fi

# --- checks -----------------------------------------------------------------
# Every guarded endpoint must refuse a request without a token and one whose
# token the AS calls inactive, and let an active one through: a baseline that
# let everything through (or never read the answer) would be a cheap one.
check_guard() { # NAME URL
    local got want token
    for token in "" "inactive-probe-$RANDOM" "active-probe-$RANDOM"; do
        want=401
        [[ $token != active-* ]] || want=200
        got=$("$TOOLS" status "$2" ${token:+"$token"} || echo error)
        [[ $got == "$want" ]] || die "$1: HTTP $got for ${token:-no token} (want $want)"
    done
}
check_guard tokengate "$TG/"
check_guard tokengate-jose "$JO/"
if [[ -n $NGINX_BIN ]]; then check_guard nginx-auth-request-lite "http://127.0.0.1:$NGX_LITE_PORT/"; fi
if ((NJS)); then check_guard nginx-auth-request "http://127.0.0.1:$NGX_NJS_PORT/"; fi

# --- load -------------------------------------------------------------------
RUN_ID=$(date +%s%N)
declare -A RPS P50 P99 IPR CPI RSS IPT HELD
ROWS=()
FAILED=0
ROUND=1

# Per-round values are stored as ARRAY[name#round]. A row's figure is the
# median over the rounds it ran in; a ratio is taken within each round (both
# rows measured minutes apart at most), then medianed.
median() { # numbers...: their median ("-" for none)
    (($#)) || { echo -; return; }
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print m }'
}
values() { # ARRAY NAME: the row's per-round values, one a line
    local -n a=$1
    local r
    for ((r = 1; r <= ROUNDS; r++)); do [[ -z ${a[$2#$r]:-} ]] || echo "${a[$2#$r]}"; done
}
med() { # ARRAY NAME FORMAT: the median of a row's values
    local v
    mapfile -t v < <(values "$1" "$2")
    ((${#v[@]})) || { echo -; return; }
    printf "$3" "$(median "${v[@]}")"
}
last() { # ARRAY NAME: the value of the last round the row ran in
    local v
    mapfile -t v < <(values "$1" "$2")
    ((${#v[@]})) && echo "${v[-1]}" || echo -
}
spread() { # NAME: " (min–max)" of its req/s over the rounds, if more than one
    local v
    mapfile -t v < <(values RPS "$1" | sort -g)
    ((${#v[@]} > 1)) && printf ' (%s–%s)' "${v[0]}" "${v[-1]}" || true
}
rmed() { # A B: the median over the rounds of req/s(A) / req/s(B)
    local r out=()
    for ((r = 1; r <= ROUNDS; r++)); do
        [[ -n ${RPS[$1#$r]:-} && -n ${RPS[$2#$r]:-} ]] || continue
        out+=("$(awk -v a="${RPS[$1#$r]}" -v b="${RPS[$2#$r]}" 'BEGIN { if (b) printf "%.4f", a / b }')")
    done
    ((${#out[@]})) || { echo -; return; }
    printf '%.2f' "$(median "${out[@]}")"
}
dmed() { # A B: the median over the rounds of p99(A) - p99(B), in ms
    local r out=()
    for ((r = 1; r <= ROUNDS; r++)); do
        [[ -n ${P99[$1#$r]:-} && -n ${P99[$2#$r]:-} ]] || continue
        out+=("$(awk -v a="${P99[$1#$r]}" -v b="${P99[$2#$r]}" 'BEGIN { printf "%.2f", a - b }')")
    done
    ((${#out[@]})) || { echo -; return; }
    printf '%+.2f' "$(median "${out[@]}")"
}

# scenario NAME URL MODE PIDS...: warm-up, then the measured run.
scenario() {
    local name=$1 url=$2 mode=$3
    shift 3
    say "$name: warm-up ${WARMUP}s, measure ${DURATION}s"
    # fixed: the warm-up caches the one token the measured run sends;
    # unique: the measured run's tokens share no prefix with the warm-up's;
    # file: the lines of $TMP/$name.warm, then of $TMP/$name.run (one each
    # request; the caller writes them).
    local warm_token=$name-$RUN_ID-$ROUND-w run_token=$name-$RUN_ID-$ROUND-m
    [[ $mode == unique ]] || run_token=$warm_token
    local warm
    warm=$(BENCH_TOKEN_MODE=$mode BENCH_TOKEN=$warm_token BENCH_FILE=$TMP/$name.warm BENCH_THREADS=1 \
        "${LG[@]}" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s bench/wrk.lua "$url")
    if [[ $mode == file ]]; then
        # A warm-up that was refused would leave the measured run cold.
        local wl
        wl=$(grep '^BENCH ' <<<"$warm") || die "$name: wrk printed no summary: $warm"
        (($(kv non2xx "$wl") == 0)) || die "$name: warm-up got $(kv non2xx "$wl") non-2xx answers ($(kv exhausted "$wl") for want of lines); logs in $TMP"
    fi
    local before after out
    before=$("$TOOLS" get "$AS/stats")
    out=$(BENCH_TOKEN_MODE=$mode BENCH_TOKEN=$run_token BENCH_FILE=$TMP/$name.run BENCH_THREADS=1 \
        "${LG[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s -s bench/wrk.lua "$url")
    after=$("$TOOLS" get "$AS/stats")
    local line
    line=$(grep '^BENCH ' <<<"$out") || die "$name: wrk printed no summary: $out"
    local req dur p50 p99 non2xx errs
    req=$(kv requests "$line") dur=$(kv duration_us "$line") p50=$(kv p50_us "$line")
    p99=$(kv p99_us "$line") non2xx=$(kv non2xx "$line") errs=$(kv errors "$line")
    local di dd dc
    di=$(($(kv introspections "$after") - $(kv introspections "$before")))
    dd=$(($(kv distinct_tokens "$after") - $(kv distinct_tokens "$before")))
    dc=$(($(kv connections "$after") - $(kv connections "$before")))
    RPS[$name#$ROUND]=$(awk -v r="$req" -v d="$dur" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
    P50[$name#$ROUND]=$(awk -v v="$p50" 'BEGIN { printf "%.2f", v / 1000 }')
    P99[$name#$ROUND]=$(awk -v v="$p99" 'BEGIN { printf "%.2f", v / 1000 }')
    IPR[$name#$ROUND]=$(awk -v i="$di" -v r="$req" 'BEGIN { printf "%.2f", r ? i / r : 0 }')
    CPI[$name#$ROUND]=$(awk -v c="$dc" -v i="$di" 'BEGIN { if (i) printf "%.3f", c / i; else print "-" }')
    IPT[$name#$ROUND]=$(awk -v i="$di" -v d="$dd" 'BEGIN { if (d) printf "%.2f", i / d; else print "-" }')
    RSS[$name#$ROUND]=$(awk -v k="$(rss_kib "$@")" 'BEGIN { printf "%.1f", k / 1024 }')
    # The AS's held times cover exactly the measured run: it resets them on
    # every /stats read, and `before` was the last one before it.
    HELD[$name#$ROUND]=$(awk -v m="$(kv held_us_mean "$after")" -v p="$(kv held_us_p99 "$after")" \
        'BEGIN { if (m != "") printf "%.2f / %.2f", m / 1000, p / 1000; else print "-" }')
    [[ " ${ROWS[*]} " == *" $name "* ]] || ROWS+=("$name")
    if ((non2xx + errs > 0)); then
        say "$name: $non2xx non-2xx answers, $errs socket errors$([[ $mode != file ]] || echo ", $(kv exhausted "$line") requests found no line left in $TMP/$name.run")"
        FAILED=1
    fi
    if [[ $mode == file && $di -ne 0 ]]; then
        say "$name: $di introspections (want 0: local JWT checks / cache hits only)"
        FAILED=1
    fi
    if [[ $mode == unique && $di -ne $dd ]]; then
        say "$name: $di introspections for $dd new tokens (want exactly one each)"
        FAILED=1
    fi
}

# Signed inputs for the JWT and DPoP rows, one per request: twice the
# tokengate-hit rate just measured (neither row can be cheaper than a cache
# hit), plus slack, for the warm-up and the measured run each.
lines_for() { # SECS
    awk -v r="${RPS[tokengate-hit#$ROUND]}" -v s="$1" -v c="$CONNS" 'BEGIN { printf "%d", 2 * r * s + 10 * c + 1000 }'
}
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    ((ROUNDS == 1)) || say "round $ROUND of $ROUNDS"
    scenario direct "$UP/" fixed "$UP_PID"
    [[ -z $NGINX_BIN ]] || scenario nginx-proxy "http://127.0.0.1:$NGX_PLAIN_PORT/" fixed "${NGINX_PIDS[@]}"
    [[ -z $NGINX_BIN ]] || scenario nginx-proxy-nolog "http://127.0.0.1:$NGX_NOLOG_PORT/" fixed "${NGINX_PIDS[@]}"
    scenario hyper-proxy "http://127.0.0.1:$HP_PORT/" fixed "$HP_PID"
    scenario tokengate-hit "$TG/" fixed "$TG_PID"
    scenario tokengate-hit-nolog "$TN/" fixed "$TN_PID"
    for w in "${WLIST[@]}"; do
        for n in nginx-proxy-nolog-w$w hyper-proxy-w$w tokengate-hit-nolog-w$w; do
            [[ -n ${WURL[$n]:-} ]] || continue
            scenario "$n" "${WURL[$n]}" fixed "${WPID[$n]}" $(pgrep -P "${WPID[$n]}" || true)
        done
    done
    if ((ROUND == 1)); then
        say "signing $(lines_for "$WARMUP") + $(lines_for "$DURATION") JWTs (ES256)"
        "$TOOLS" jwt-tokens ES256 "jwt-$RUN_ID" "$(lines_for "$WARMUP")" "$TMP/tokengate-jwt-new.warm" \
            "$(lines_for "$DURATION")" "$TMP/tokengate-jwt-new.run"
        scenario tokengate-jwt-new "$JO/" file "$JO_PID"
        rm -f "$TMP"/tokengate-jwt-new.*
        # The same with RS256. Signing RSA costs ~1 ms a token on one CPU (ES256:
        # tens of µs), so tokens for twice the hit rate over a full row would
        # take many minutes: measure the signing rate here, and run the row (1 s
        # warm-up) for as long as ~90 s of signing on every CPU covers, at most
        # DURATION. req/s is a rate: a shorter row is comparable with the others.
        t0=$(date +%s%N)
        "$TOOLS" jwt-tokens RS256 "rs-probe-$RUN_ID" 400 "$TMP/rs-probe"
        RS_NS=$(($(date +%s%N) - t0)); rm -f "$TMP/rs-probe"
        RS_SECS=$(awk -v n=400 -v ns="$RS_NS" -v r="${RPS[tokengate-hit#$ROUND]}" -v c="$CONNS" -v d="$DURATION" 'BEGIN {
            if (r <= 0) { print d; exit }
            rate = n / (ns / 1e9); s = int((rate * 90 - 2 * (10 * c + 1000)) / (2 * r)) - 1
            if (s > d) s = d; if (s < 1) s = 1; print s }')
        say "signing $(lines_for 1) + $(lines_for "$RS_SECS") JWTs (RS256; row ${RS_SECS}s)"
        "$TOOLS" jwt-tokens RS256 "jwt-rs-$RUN_ID" "$(lines_for 1)" "$TMP/tokengate-jwt-new-rs256.warm" \
            "$(lines_for "$RS_SECS")" "$TMP/tokengate-jwt-new-rs256.run"
        WARMUP=1 DURATION=$RS_SECS scenario tokengate-jwt-new-rs256 "$JO/" file "$JO_PID"
        rm -f "$TMP"/tokengate-jwt-new-rs256.*
        say "signing $(lines_for "$WARMUP") + $(lines_for "$DURATION") DPoP proofs (ES256)"
        # htu: exactly the URL wrk requests (tokengate builds it from Host and path).
        "$TOOLS" dpop-proofs "$JO/" "dpop-$RUN_ID" "$(lines_for "$WARMUP")" "$TMP/tokengate-dpop.warm" \
            "$(lines_for "$DURATION")" "$TMP/tokengate-dpop.run"
        scenario tokengate-dpop "$JO/" file "$JO_PID"
        rm -f "$TMP"/tokengate-dpop.*
    fi
    # Unique tokens: each round's run_token differs (RUN_ID + round).
    [[ -z $NGINX_BIN ]] || scenario nginx-auth-request-lite "http://127.0.0.1:$NGX_LITE_PORT/" unique "${NGINX_PIDS[@]}"
    ((NJS == 0)) || scenario nginx-auth-request "http://127.0.0.1:$NGX_NJS_PORT/" unique "${NGINX_PIDS[@]}"
    scenario tokengate-miss "$TG/" unique "$TG_PID"
done

say "burst: $BURST concurrent requests, one new token"
BURST_LINE=$("$TOOLS" burst "$TG/" "$AS" "$BURST") || { echo "$BURST_LINE"; FAILED=1; }

# The authorizer alone (no upstream), at a cache hit: Envoy's gRPC Check
# against the HTTP forward-auth sub-request, the same decision behind both,
# driven by one client (bench-tools authz-load) so that the two protocols
# are measured the same way.
say "authorizer: gRPC ext_authz Check vs HTTP forward-auth, cache hit"
AZ_PORT=$(port) AZ_GRPC=$(port)
write_authz_config "$TMP/authz.toml" "$AZ_PORT" "$AZ_GRPC" "$AS"
"${SV[@]}" "$GATE" --config "$TMP/authz.toml" >"$TMP/authz.log" 2>&1 &
AZ_PID=$!; PIDS+=("$AZ_PID")
wait_http "http://127.0.0.1:$AZ_PORT/public"
AUTHZ_LINE=$("${LG[@]}" "$TOOLS" authz-load "127.0.0.1:$AZ_GRPC" "http://127.0.0.1:$AZ_PORT/api/items" \
    "$DURATION" "$CONNS" "authz-$RUN_ID" 2>&1) || { echo "$AUTHZ_LINE"; FAILED=1; }
kill "$AZ_PID" 2>/dev/null || true

say "start-up: exec to first 200, idle RSS"
SU_PORT=$(port)
write_gate_config "$TMP/startup.toml" "$SU_PORT" "$UP" "$AS"
STARTUP_LINES=()
for _ in 1 2 3 4 5; do
    STARTUP_LINES+=("$("${SV[@]}" "$TOOLS" startup "$GATE" "$TMP/startup.toml" "http://127.0.0.1:$SU_PORT/public")")
done

MEM_LINES=()
if ((MEM)); then
    say "memory: cache entries $MEM_COUNTS"
    # typical answers, then moka's own floor (a bare cache of `()` values)
    mapfile -t MEM_LINES < <("${SV[@]}" "$TOOLS" mem "$MEM_COUNTS" 2>/dev/null
        "${SV[@]}" "$TOOLS" mem "$MEM_COUNTS" moka-unit)
fi

# --- report -----------------------------------------------------------------
table() {
    local rs="req/s"
    ((ROUNDS == 1)) || rs="req/s median (min–max)"
    echo "| scenario | $rs | p50 ms | p99 ms | vs direct | vs nginx | introspections/req | introspections/new token | AS conns/introspection | AS held ms mean / p99 | RSS MiB |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    local n base
    for n in "${ROWS[@]}"; do
        base=""
        case $n in
        nginx-proxy | tokengate-hit | tokengate-jwt-new* | tokengate-dpop) base=nginx-proxy ;;
        nginx-proxy-nolog | hyper-proxy | tokengate-hit-nolog) base=nginx-proxy-nolog ;;
        *-w[0-9]*) base=nginx-proxy-nolog-w${n##*-w} ;;
        tokengate-miss | nginx-auth-request*) base=nginx-auth-request ;;
        esac
        echo "| $n | $(med RPS "$n" %.0f)$(spread "$n") | $(med P50 "$n" %.2f) | $(med P99 "$n" %.2f) | $(rmed "$n" direct) |" \
            "$([[ -n $base ]] && rmed "$n" "$base" || echo -) | $(last IPR "$n") | $(last IPT "$n") | $(last CPI "$n") | $(last HELD "$n") | $(last RSS "$n") |"
    done
    echo
    local bound
    bound=$(awk -v c="$CONNS" -v l="$LATENCY_MS" 'BEGIN { if (l > 0) printf "%.0f", c / (l / 1000); else print "-" }')
    ((ROUNDS == 1)) || echo "- $ROUNDS rounds, rows interleaved; req/s, p50 and p99: medians over the rounds; every ratio: taken in each round, then the median. tokengate-jwt-new, tokengate-jwt-new-rs256 and tokengate-dpop: round 1 only."
    echo "- upstream: $UPSTREAM_DESC."
    if [[ -n $NGINX_BIN ]]; then
        echo "- cache hits, like for like (target ≥ 1.0×, p99 within 1 ms): tokengate-hit vs nginx-proxy (access logs on): $(rmed tokengate-hit nginx-proxy)×, p99 $(dmed tokengate-hit nginx-proxy) ms; tokengate-hit-nolog vs nginx-proxy-nolog (access logs off): $(rmed tokengate-hit-nolog nginx-proxy-nolog)×, p99 $(dmed tokengate-hit-nolog nginx-proxy-nolog) ms; hyper-proxy vs nginx-proxy-nolog: $(rmed hyper-proxy nginx-proxy-nolog)×."
    fi
    echo "- tokengate-hit-nolog vs hyper-proxy (hyper's server and hyper-util's client, no auth, no header work, no log): $(rmed tokengate-hit-nolog hyper-proxy)×; tokengate-hit vs tokengate-hit-nolog (the access line's cost): $(rmed tokengate-hit tokengate-hit-nolog)×."
    local w
    for w in "${WLIST[@]}"; do
        echo "- $w workers (each proxy on CPUs 0-$((w - 1)), sharing them with wrk, the AS and the upstream), no access logs: tokengate-hit-nolog-w$w vs nginx-proxy-nolog-w$w: $(rmed "tokengate-hit-nolog-w$w" "nginx-proxy-nolog-w$w")×, hyper-proxy-w$w: $(rmed "hyper-proxy-w$w" "nginx-proxy-nolog-w$w")×; scaling from 1 worker: nginx $(rmed "nginx-proxy-nolog-w$w" nginx-proxy-nolog)×, hyper-proxy $(rmed "hyper-proxy-w$w" hyper-proxy)×, tokengate $(rmed "tokengate-hit-nolog-w$w" tokengate-hit-nolog)×."
    done
    echo "- tokengate-jwt-new vs tokengate-hit (a new ES256 JWT access token per request, checked locally, 0 AS calls; target ≥ 0.8×): $(rmed tokengate-jwt-new tokengate-hit)×."
    echo "- tokengate-jwt-new-rs256 vs tokengate-hit (the same with RS256, a ${RS_SECS}s row: RSA signing sizes it; target ≥ 0.8×): $(rmed tokengate-jwt-new-rs256 tokengate-hit)×."
    echo "- tokengate-dpop vs tokengate-hit (cache hit + a new ES256 DPoP proof per request: signature, htm/htu/iat/ath, cnf.jkt, replay cache): $(rmed tokengate-dpop tokengate-hit)×."
    echo "- miss rows: \"vs nginx\" is against nginx-auth-request (auth_request + njs introspection with $NJS_CALL, no cache)$( ((NJS)) || echo ": not run, $NJS_WHY")."
    if [[ -n $NGINX_BIN ]]; then
        echo "- tokengate-miss vs nginx-auth-request-lite (GET /auth, keep-alive, no introspection): $(rmed tokengate-miss nginx-auth-request-lite)×."
    fi
    echo "- miss bound: $CONNS connections ÷ ${LATENCY_MS} ms = $bound req/s for any proxy with zero overhead of its own; AS held = from the AS handler's start to its answer ($AS_SLEEP sleep)."
    echo "- burst: \`$BURST_LINE\`"
    echo "- authorizer only, cache hit, $CONNS concurrent calls, ${DURATION}s each (gRPC ext_authz Check vs HTTP forward-auth, one decision behind both): \`$AUTHZ_LINE\`"
    local s
    for s in "${STARTUP_LINES[@]}"; do echo "- \`$s\`"; done
    for s in "${MEM_LINES[@]}"; do echo "- \`$s\`"; done
}

MODEL=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
REPORT=$(
    echo "Run $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty'),"
    echo "$(nproc) CPU ($MODEL), load average at the end $(cut -d' ' -f1-3 /proc/loadavg)."
    echo "Command: \`$COMMAND\` — wrk -t1 -c$CONNS -d${DURATION}s after ${WARMUP}s warm-up; $PINNING;"
    echo "mock AS latency ${LATENCY_MS} ms; build: $( ((SMOKE)) && echo dev || echo release)."
    echo
    table
)
echo
echo "$REPORT"

if ((WRITE)); then
    [[ -f BENCHMARKS.md ]] || printf '# Benchmarks\n\n<!-- bench:latest:start -->\n<!-- bench:latest:end -->\n' >BENCHMARKS.md
    awk -v report="$REPORT" '
        /<!-- bench:latest:start -->/ { print; print report; skip = 1; next }
        /<!-- bench:latest:end -->/ { skip = 0 }
        !skip { print }' BENCHMARKS.md >"$TMP/BENCHMARKS.md"
    cp "$TMP/BENCHMARKS.md" BENCHMARKS.md
    say "wrote the table into BENCHMARKS.md"
fi

((FAILED == 0)) || die "checks failed (see above); logs were in $TMP"
say "ok"
