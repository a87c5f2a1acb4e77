# Portico: the gateway and the UserService in one small image.
#   docker build -t portico .
#   docker run -p 8080:8080 -p 50051:50051 -v portico-data:/var/lib/portico portico
# Build stage: only cargo and a C compiler are needed (protox compiles the protos; SQLite is bundled).
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY migrations migrations
COPY benches benches
COPY src src
RUN cargo build --release --locked --bin portico && strip target/release/portico

# Runtime stage: Debian slim, a non-root user, and the data directory as a volume.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/portico --create-home portico
COPY --from=build /src/target/release/portico /usr/local/bin/portico
USER portico
WORKDIR /var/lib/portico
VOLUME ["/var/lib/portico"]
# In a container both listeners face the network; the database lives in the volume.
ENV PORTICO_LISTEN=0.0.0.0:8080 \
    PORTICO_GRPC_LISTEN=0.0.0.0:50051 \
    PORTICO_DB=/var/lib/portico/portico.db \
    PORTICO_LOG_FORMAT=json
EXPOSE 8080 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["portico", "healthcheck", "--url", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["portico"]
CMD ["serve"]
