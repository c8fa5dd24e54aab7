# syntax=docker/dockerfile:1
# Two images from the executables `bun run build` makes (the Bun runtime is inside each, nothing else is needed):
#   docker build -t tcp_echo_server .                 the echo server: the last target, so the default
#   docker run --rm -p 5000:5000 tcp_echo_server
#   docker build --target proxy -t tcp_proxy .         the proxy, its HTTP API on 8474 (toxiproxy's port)
#   docker run --rm -p 8474:8474 -p 26379:26379 tcp_proxy     publish the API and each proxy's listen port
# `docker stop` sends SIGTERM, which both handle with a graceful drain. See docs/deploy.md.

# The runtime base, pinned (see the runtime stage below).
ARG RUNTIME_IMAGE=gcr.io/distroless/base-nossl-debian12:nonroot
ARG RUNTIME_DIGEST=sha256:be40c00dfabd86576d92666e87e406714d5618342de1a0c213ad232de255172e

# Build: the same Bun as package.json's bun-types and .ci/run; it compiles for the platform it runs on.
FROM oven/bun:1.4.5-slim AS build
WORKDIR /src
COPY package.json bun.lock bunfig.toml ./
RUN bun install --frozen-lockfile
# Only the sources the build reads are in the context (.dockerignore): editing a test or a doc rebuilds nothing.
COPY . .
RUN bun run build tcp-echo-server tcp-proxy

# Run: distroless base-nossl (glibc, CA certificates, tzdata, /etc/passwd; no shell, no package manager), all an
# executable built by Bun needs (ldd: libc, libpthread, libdl, libm). Pinned by digest: distroless has no version
# tags beyond the Debian release. No registry access where this was written; this digest is the one several
# public Dockerfiles pin for the same tag. Re-check: docker buildx imagetools inspect $RUNTIME_IMAGE.
FROM ${RUNTIME_IMAGE}@${RUNTIME_DIGEST} AS runtime
# The image's unprivileged user, by number: Kubernetes' runAsNonRoot can only verify a numeric one.
USER 65532:65532
STOPSIGNAL SIGTERM

# The proxy, for the toxiproxy-compatible stage: its API on 0.0.0.0:8474 (unauthenticated: publish it only where
# you trust the network), proxies made through it listen on the ports their "listen" names (publish those with -p).
# Arguments replace CMD: `docker run tcp_proxy --host 0.0.0.0 --port 6000 --upstream echo:5000` for a fixed one.
FROM runtime AS proxy
COPY --from=build /src/dist/tcp-proxy /usr/local/bin/tcp-proxy
EXPOSE 8474
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/tcp-proxy", "--healthcheck", "http://127.0.0.1:8474/version"]
ENTRYPOINT ["/usr/local/bin/tcp-proxy"]
CMD ["--api-host", "0.0.0.0", "--api-port", "8474"]

# The echo server, configured from the environment: override any of it with `docker run -e NAME=value` (HOST, PORT,
# WORKERS, MAX_CLIENTS, DRAIN_TIMEOUT, METRICS_PORT, LOG_FORMAT, ...: `docker run --rm tcp_echo_server --help`).
# WORKERS defaults to the CPUs the container may use (its cpuset, not a --cpus quota: set WORKERS to match).
# DRAIN_TIMEOUT (8 s) stays under docker stop's 10 s. The health check is one echo exchange on HOST and PORT.
FROM runtime AS echo
COPY --from=build /src/dist/tcp-echo-server /usr/local/bin/tcp-echo-server
ENV HOST=0.0.0.0 \
    PORT=5000
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/tcp-echo-server", "--healthcheck"]
ENTRYPOINT ["/usr/local/bin/tcp-echo-server"]
