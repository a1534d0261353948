# syntax=docker/dockerfile:1
#
# The provet-broker daemon. Build (BuildKit):
#   docker build --build-arg GIT_COMMIT="$(git rev-parse --short=12 HEAD)" -t provet-broker .
# Run on the embedded SQLite, keeping the database and a generated master key in a volume:
#   docker run -p 127.0.0.1:8080:8080 -v broker-data:/app/data provet-broker
# See docker-compose.yml for PostgreSQL and the master key as a secret file.

# ---- dependencies (cargo-chef) -------------------------------------------------------------
# sea-orm 2 / sqlx 0.9 need Rust >= 1.94. The slim image carries gcc, which ring and the
# bundled SQLite need; nothing else in the graph builds C.
FROM rust:1.95-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version ^0.1
WORKDIR /src

# The recipe is the workspace's manifests and lock file only: it changes when dependencies
# do, not when our code does.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
# Strip symbols from the release binary (set for both steps, so the cooked dependencies
# are built with the same profile as the final build).
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
COPY --from=planner /src/recipe.json recipe.json
# This layer (every dependency, compiled) is cached until Cargo.toml or Cargo.lock change.
RUN cargo chef cook --release --locked -p provet-broker --recipe-path recipe.json
COPY . .
# .git is not in the build context: the commit for broker_build_info comes in as an argument.
ARG GIT_COMMIT=""
RUN PROVET_BROKER_GIT_COMMIT="${GIT_COMMIT}" cargo build --release --locked -p provet-broker \
    && install -m 0755 target/release/provet-broker /usr/local/bin/provet-broker

# ---- runtime --------------------------------------------------------------------------------
# Same Debian release as the builder, so the binary's glibc matches.
FROM debian:bookworm-slim AS runtime

ARG VERSION="0.1.0"
ARG GIT_COMMIT=""
LABEL org.opencontainers.image.title="provet-broker" \
      org.opencontainers.image.description="Hookup URL, OAuth client store and token broker for Provet Cloud integrations" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.licenses="MIT"

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
RUN mkdir -p /app/data && chown broker:broker /app/data && chmod 0700 /app/data
# The SQLite database and a generated master key (when no key is configured) live here.
VOLUME ["/app/data"]

COPY --from=builder /usr/local/bin/provet-broker /usr/local/bin/provet-broker

# Listen on every interface inside the container; publish the port on the host as needed.
ENV BROKER_SERVER__BIND=0.0.0.0:8080
EXPOSE 8080

# Numeric, so that runtimes enforcing "run as non-root" can verify it.
USER 10001:10001

# `healthcheck` reads the same configuration and exits 0 when /readyz answers 200
# (database reachable, migrations current, every sealing key configured).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=5 \
    CMD ["/usr/local/bin/provet-broker", "healthcheck"]

# The daemon handles SIGTERM itself (drains in-flight requests for server.shutdown_timeout,
# 30s by default), so it runs as PID 1; give it longer than that to stop (compose:
# stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/provet-broker"]
CMD ["serve"]
