# Build: docker build -t openproxy .
# Run:   docker run -p 8080:8080 -v $PWD/config.yml:/config.yml openproxy
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked

FROM debian:bookworm-slim
COPY --from=build /src/target/release/openproxy /usr/local/bin/openproxy
USER nobody
ENTRYPOINT ["/usr/local/bin/openproxy"]
CMD ["start", "-c", "/config.yml"]
