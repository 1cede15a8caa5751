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

# nginx_main DIR: nginx's top-level settings (one worker, in the foreground,
# everything under DIR), for a config that then adds its http block.
nginx_main() {
    [[ $(id -u) -ne 0 ]] || echo "user root;"
    cat <<NGINX
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
events { worker_connections 4096; }
NGINX
}

# nginx_http_common DIR UPSTREAM_PORT: the start of the http block: an access
# log per request (nginx's default, as tokengate logs every request), temp
# paths under DIR, and the upstream pool `app` with keep-alive.
nginx_http_common() {
    cat <<NGINX
    access_log $1/logs/access.log;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    upstream app { server 127.0.0.1:$2; keepalive 64; }
NGINX
}

# nginx_plain_server PORT: the nginx-proxy row: a plain proxy_pass to `app`,
# keep-alive upstream connections, no auth.
nginx_plain_server() {
    cat <<NGINX
    server {
        listen 127.0.0.1:$1;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
NGINX
}
