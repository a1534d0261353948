# syntax=docker/dockerfile:1
#
# The provet-broker daemon. Build (BuildKit is needed for the cache mounts):
#   docker build -t provet-broker .
# Run on the embedded SQLite, keeping the database and a generated master key in a volume:
#   docker run -p 127.0.0.1:8080:8080 -v broker-data:/app/data provet-broker
# See docker-compose.yml for PostgreSQL.

# ---- build ----------------------------------------------------------------------------------
# sea-orm 2 / sqlx 0.9 need Rust >= 1.94. The slim image carries gcc, which ring and the
# bundled SQLite need; nothing else in the graph builds C.
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src

# Every workspace member's manifest must be present for cargo to load the workspace, so the
# whole source tree goes in (.dockerignore keeps target/, data/ and fuzz output out).
COPY . .

# The registry and target/ live in cache mounts: a rebuild after a source change recompiles
# only our crates. A cache mount is not part of the image, so the binary is copied out of it.
RUN --mount=type=cache,id=provet-broker-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=provet-broker-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=provet-broker-target,target=/src/target,sharing=locked \
    cargo build --release --locked -p provet-broker \
    && install -m 0755 target/release/provet-broker /usr/local/bin/provet-broker

# ---- runtime --------------------------------------------------------------------------------
# Same Debian release as the builder, so the binary's glibc matches.
FROM debian:bookworm-slim AS runtime

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 broker \
    && useradd --system --uid 10001 --gid broker --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin broker

# Relative paths in the configuration (config/default.toml, data/broker.db, data/master.key)
# resolve against the working folder.
WORKDIR /app
COPY --chown=root:root config/default.toml /app/config/default.toml
RUN mkdir -p /app/data && chown broker:broker /app/data && chmod 0750 /app/data
# The SQLite database and a generated master key (when secrets.master_key is unset) live here.
VOLUME ["/app/data"]

COPY --from=builder /usr/local/bin/provet-broker /usr/local/bin/provet-broker

# Listen on every interface inside the container; publish the port on the host as needed.
ENV BROKER_SERVER__BIND=0.0.0.0:8080
EXPOSE 8080

# Numeric, so that runtimes enforcing "run as non-root" can verify it.
USER 10001:10001

# The daemon handles SIGTERM itself (drains in-flight requests), so it can run as PID 1.
ENTRYPOINT ["/usr/local/bin/provet-broker"]
CMD ["serve"]
