# Sourced by bench/run.sh and bench/profile.sh: the tokengate config both measure.
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
