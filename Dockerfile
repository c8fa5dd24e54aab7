# The most complete echo server stage, listening on 0.0.0.0:5000 inside the container.
#   docker build -t tcp_echo_server .
#   docker run --rm -p 5000:5000 -it tcp_echo_server
# `docker stop` sends SIGTERM, which the stage handles with a graceful shutdown.

# Pinned: the same Bun as package.json's bun-types and .ci/run.
FROM oven/bun:1.4.5-slim

WORKDIR /app
# The last echo stage reads its configuration from the environment: override any of it with `docker run -e NAME=value`.
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=5000

# Dependencies first, so editing a stage does not invalidate this layer. Runtime dependencies only.
COPY package.json bun.lock bunfig.toml ./
RUN bun install --frozen-lockfile --production

COPY tcp_echo_server/ ./tcp_echo_server/

# The base image ships an unprivileged `bun` user; port 5000 needs no privilege.
USER bun
EXPOSE 5000
STOPSIGNAL SIGTERM
# Stage 013, the last echo stage: one worker per CPU the container may use (WORKERS=N to choose), graceful drain
# on SIGTERM within DRAIN_TIMEOUT (8 s, under docker stop's 10 s). Metrics: docker run -e METRICS_PORT=9100
# -p 9100:9100 ...
CMD ["bun", "tcp_echo_server/013-ready-for-containers.ts"]
