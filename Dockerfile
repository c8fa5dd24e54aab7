# The most complete echo server stage, listening on 0.0.0.0:5000 inside the container.
#   docker build -t tcp_echo_server .
#   docker run --rm -p 5000:5000 -it tcp_echo_server
# `docker stop` sends SIGTERM, which the stage handles with a graceful shutdown.

# Pinned: the same Bun as package.json's bun-types and .ci/run.
FROM oven/bun:1.4.5-slim

WORKDIR /app
# HOST and PORT: the container's address (stage 007 reads them; the command below also passes them as flags).
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
CMD ["bun", "tcp_echo_server/005-bounded-concurrency.ts", "--host", "0.0.0.0", "--port", "5000"]
