# Build: docker build -t openproxy .
# Run:   docker run -p 8080:8080 -e OPENAI_API_KEY openproxy
# With your own config and certificates (the paths config.container.yml uses):
#   docker run -p 8080:8080 -p 8443:8443 \
#     -v $PWD/config.yml:/etc/openproxy/config.yml:ro -v $PWD/certs:/certs:ro openproxy
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin openproxy

FROM debian:bookworm-slim
COPY --from=build /src/target/release/openproxy /usr/local/bin/openproxy
COPY config.container.yml /etc/openproxy/config.yml
# An unprivileged user; the listeners use ports above 1024.
USER 65534:65534
EXPOSE 8080 8443
# The admin listener's /healthz (admin_port 9090 in config.container.yml),
# with bash's /dev/tcp: the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' >&3 && head -c 12 <&3 | grep -q ' 200'"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/openproxy"]
CMD ["start", "-c", "/etc/openproxy/config.yml"]
