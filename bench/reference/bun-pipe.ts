#!/usr/bin/env bun
// The minimal reference for the proxy benchmark: Bun.listen and Bun.connect, each chunk written to the other side,
// a partial write kept and the sender paused until `drain` (backpressure, or memory would grow without bound),
// a close passed on. No logs, limits, timeouts or half-close. It shows what any Bun proxy costs: the memory a stage
// takes under bulk load beyond this is the stage's own. Usage: bun bench/reference/bun-pipe.ts --upstream HOST:PORT
// [--host 127.0.0.1] [--port 0]; prints `listening on HOST:PORT` like the stages.
import type { Socket } from "bun";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "0" },
    upstream: { type: "string" },
  },
});
const [upstreamHost, upstreamPort] = (values.upstream ?? "").split(/:(?=\d+$)/);
if (!upstreamHost || !upstreamPort) {
  process.stderr.write("error: --upstream HOST:PORT is required\n");
  process.exit(2);
}

interface End {
  peer?: Socket<End>;
  /** What the peer did not take yet: written on `drain`, the peer's sender paused meanwhile. */
  pending: Uint8Array[];
}

function forward(from: Socket<End>, chunk: Uint8Array): void {
  const to = from.data.peer;
  if (to === undefined || to.data.pending.length > 0) {
    // Not connected yet, or older bytes still wait: keep these after them.
    (to?.data.pending ?? from.data.pending).push(chunk);
    if (to) from.pause();
    return;
  }
  const written = to.write(chunk);
  if (written >= 0 && written < chunk.length) {
    to.data.pending.push(chunk.subarray(written));
    from.pause();
  }
}

function drain(socket: Socket<End>): void {
  const { pending, peer } = socket.data;
  while (pending.length > 0) {
    const head = pending[0]!;
    const written = socket.write(head);
    if (written < head.length) {
      if (written > 0) pending[0] = head.subarray(written);
      return;
    }
    pending.shift();
  }
  peer?.resume();
}

const handlers = {
  data: forward,
  drain,
  close: (socket: Socket<End>) => void socket.data.peer?.end(),
  error: () => {},
};

const listener = Bun.listen<End>({
  hostname: values.host,
  port: Number(values.port),
  socket: {
    ...handlers,
    open(client) {
      client.data = { pending: [] }; // a fresh object: the listen-level `data` is shared by every socket
      Bun.connect<End>({
        hostname: upstreamHost,
        port: Number(upstreamPort),
        data: { peer: client, pending: [] },
        socket: {
          ...handlers,
          open(upstream) {
            client.data.peer = upstream;
            const early = client.data.pending.splice(0); // what the client sent while we connected
            for (const chunk of early) forward(client, chunk);
          },
        },
      }).catch(() => client.end());
    },
  },
});
console.log(`listening on ${values.host}:${listener.port}`);
