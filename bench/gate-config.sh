# Sourced by bench/run.sh and bench/profile.sh: the tokengate config both
# measure, and the nginx settings both run nginx with.
# write_gate_config FILE PORT UPSTREAM_URL AS_URL
write_gate_config() {
    cat >"$1" <<CONFIG
listen = "127.0.0.1:$2"
upstream = "$3"
[introspection]
url = "$4/introspect"
client_id = "tokengate"
client_secret = "bench-secret"
[cache]
max_entries = 1000000
[admin]
# Off: the measured instance and the start-up probe run side by side, and the
# admin port is not on the request path being measured.
listen = ""
[[routes]]
path_prefix = "/public"
public = true
CONFIG
}

# write_jose_config FILE PORT UPSTREAM_URL AS_URL: write_gate_config's gate,
# plus local checks of JWT access tokens (the mock AS's /jwks, bench keys) and
# a DPoP proof window of an hour, so run.sh can sign the proofs before the run
# (a client signs each just before its request). The replay cache is sized
# for the proofs of a full run (each proof's jti is remembered).
write_jose_config() {
    write_gate_config "$@"
    cat >>"$1" <<CONFIG
[jwt]
enabled = true
issuer = "https://auth.example.com"
jwks_url = "$4/jwks"
[dpop]
max_age = "1h"
replay_cache_entries = 2000000
CONFIG
}

# write_authz_config FILE HTTP_PORT GRPC_PORT AS_URL: tokengate as an
# authorizer only (no upstream): HTTP forward-auth (Envoy convention) on
# HTTP_PORT and gRPC ext_authz on GRPC_PORT, one decision behind both.
write_authz_config() {
    cat >"$1" <<CONFIG
listen = "127.0.0.1:$2"
mode = "forward_auth"
[forward_auth]
convention = "envoy"
[ext_authz]
listen = "127.0.0.1:$3"
[introspection]
url = "$4/introspect"
client_id = "tokengate"
client_secret = "bench-secret"
[admin]
listen = ""
[[routes]]
path_prefix = "/public"
public = true
CONFIG
}

# nginx_main DIR [WORKERS]: nginx's top-level settings (WORKERS worker
# processes, default 1, in the foreground, everything under DIR), for a config
# that then adds its http block.
nginx_main() {
    [[ $(id -u) -ne 0 ]] || echo "user root;"
    cat <<NGINX
worker_processes ${2:-1};
daemon off;
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
events { worker_connections 4096; }
NGINX
}

# nginx_http_common DIR UPSTREAM_PORT [IDLE]: the start of the http block: an
# access log per request (nginx's default, as tokengate logs every request),
# temp paths under DIR, and the upstream pool `app` with keep-alive. nginx
# closes a keep-alive connection after 1000 requests by default (client side
# and upstream pool alike); tokengate has no such limit, so both are raised:
# the baseline should not pay reconnects the proxy under test does not. For
# the same reason the pool keeps IDLE idle connections (default 64): with more
# requests in flight than that, nginx would open and close an upstream
# connection per request (tokengate keeps up to 1 024 idle).
nginx_http_common() {
    cat <<NGINX
    access_log $1/logs/access.log;
    keepalive_requests 10000000;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    upstream app { server 127.0.0.1:$2; keepalive ${3:-64}; keepalive_requests 10000000; }
NGINX
}

# nginx_plain_server PORT [off]: the nginx-proxy row: a plain proxy_pass to
# `app`, keep-alive upstream connections, no auth; `off`: with `access_log off`
# (the nginx-proxy-nolog row, against tokengate with `log.access = false`).
nginx_plain_server() {
    cat <<NGINX
    server {
        listen 127.0.0.1:$1;
        ${2:+access_log off;}
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
NGINX
}

# nginx_upstream_config DIR PORT: the origin of `bench/run.sh --upstream nginx`
# (and `UPSTREAM=nginx bench/profile.sh`): one nginx worker, no master (one
# PID, whose CPU the harness reads), no access log, a fixed `200 ok` from
# memory. Not under test: it stands for an application that is not hyper.
nginx_upstream_config() {
    nginx_main "$1"
    cat <<NGINX
master_process off;
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    server {
        listen 127.0.0.1:$2;
        default_type text/plain;
        location / { return 200 "ok\n"; }
    }
}
NGINX
}
