# tokengate container image.
#
#   docker build -t tokengate .
#
# The baked config (deploy/docker/tokengate.toml) listens on 0.0.0.0:8080 and
# has no authorization server: give it one, and the secret, in the environment.
# With the secret in an environment variable (`-e NAME` without a value passes
# the variable from your shell, so the secret is not in the command line):
#
#   export TOKENGATE_INTROSPECTION__CLIENT_SECRET='<your client secret>'
#   docker run --rm -p 8080:8080 \
#     -e TOKENGATE_UPSTREAM=http://api.internal:3000 \
#     -e TOKENGATE_INTROSPECTION__URL=https://auth.example.com/oauth2/introspect \
#     -e TOKENGATE_INTROSPECTION__CLIENT_ID=tokengate \
#     -e TOKENGATE_INTROSPECTION__CLIENT_SECRET \
#     tokengate
#
# With the secret in a file mounted into the container (it must be readable by
# the container's user, uid 10001):
#
#   printf '%s' '<your client secret>' > client_secret
#   chmod 0400 client_secret && sudo chown 10001 client_secret
#   docker run --rm -p 8080:8080 \
#     -e TOKENGATE_UPSTREAM=http://api.internal:3000 \
#     -e TOKENGATE_INTROSPECTION__URL=https://auth.example.com/oauth2/introspect \
#     -e TOKENGATE_INTROSPECTION__CLIENT_ID=tokengate \
#     -v "$PWD/client_secret:/run/secrets/tokengate_client_secret:ro" \
#     -e TOKENGATE_INTROSPECTION__CLIENT_SECRET_FILE=/run/secrets/tokengate_client_secret \
#     tokengate
#
# Add --check-config at the end of either line to validate without starting.
# tests/deploy.rs runs both lines' settings through the binary's --check-config.

# ---- build ----
# rust:*-slim ships gcc and libc6-dev, which ring's build script needs.
FROM rust:1-slim-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tokengate

# ---- run ----
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tokengate \
    && useradd --system --uid 10001 --gid tokengate --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin tokengate
COPY --from=builder /src/target/release/tokengate /usr/local/bin/tokengate
COPY deploy/docker/tokengate.toml /etc/tokengate/tokengate.toml
ENV TOKENGATE_CONFIG=/etc/tokengate/tokengate.toml
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# The proxy only. The admin listener stays on the container's loopback: see
# the [admin] section of deploy/docker/tokengate.toml for how to open it.
EXPOSE 8080
# Exec form: tokengate is PID 1 and receives SIGTERM (graceful drain).
ENTRYPOINT ["/usr/local/bin/tokengate"]
