# profile-sync: a multi-stage build producing a small runtime image that runs as non-root.
#   docker build -t profile-sync .
#   docker run --rm profile-sync run          # the embedded default over the sample events

FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka is built from source by rdkafka's build script; it needs these.
RUN apt-get update && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev libsasl2-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY schemas ./schemas
COPY geoip ./geoip
RUN cargo build --release --locked --bin profile-sync

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libcurl4 libsasl2-2 libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin profile-sync
WORKDIR /app
COPY --from=build /src/target/release/profile-sync /usr/local/bin/profile-sync
COPY schemas ./schemas
COPY geoip ./geoip
COPY pipelines ./pipelines
COPY samples ./samples
RUN mkdir -p /app/data && chown profile-sync /app/data
USER profile-sync
EXPOSE 9898
ENTRYPOINT ["profile-sync"]
CMD ["run", "--pipeline", "pipelines/local.yaml"]
