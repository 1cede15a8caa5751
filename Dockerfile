# tokengate container image.
#   docker build -t tokengate .
#   docker run -p 8080:8080 \
#     -e TOKENGATE_UPSTREAM=http://api:3000 \
#     -e TOKENGATE_INTROSPECTION__URL=https://auth.example.com/oauth2/introspect \
#     -e TOKENGATE_INTROSPECTION__CLIENT_ID=tokengate \
#     -e TOKENGATE_INTROSPECTION__CLIENT_SECRET_FILE=/run/secrets/tokengate \
#     tokengate

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
COPY config/tokengate.toml /etc/tokengate/tokengate.toml
ENV TOKENGATE_CONFIG=/etc/tokengate/tokengate.toml
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# 8080: the proxy. 9090: admin (/healthz, /readyz, /metrics, POST /purge); it
# listens on 127.0.0.1 unless admin.listen says otherwise (e.g. "0.0.0.0:9090",
# which also requires admin.purge_secret_file): see deploy/README.md.
EXPOSE 8080 9090
# Exec form: tokengate is PID 1 and receives SIGTERM (graceful drain).
ENTRYPOINT ["/usr/local/bin/tokengate"]
