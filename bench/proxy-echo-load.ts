#!/usr/bin/env bun
// Closed-loop echo load for the proxy benchmark: N connections, each sends one message, waits for the whole
// reply, notes the round-trip time and sends the next, for a fixed time. Prints one JSON line on stdout:
// {"messages":..,"seconds":..,"msgsPerSec":..,"p50Ms":..,"p99Ms":..,"errors":..}
// Usage: bun bench/proxy-echo-load.ts --port 5000 [--host 127.0.0.1] [--connections 100] [--seconds 5] [--size 64]
//        [--warmup 1]
import type { Socket } from "bun";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string" },
    connections: { type: "string", default: "100" },
    seconds: { type: "string", default: "5" },
    warmup: { type: "string", default: "1" },
    size: { type: "string", default: "64" },
  },
  strict: true,
});
if (values.port === undefined) {
  process.stderr.write("error: --port is required\n");
  process.exit(2);
}

const connections = Number(values.connections);
const size = Number(values.size);
const message = new Uint8Array(size).fill(0x61); // "aaaa...": the echo answers "AAAA..."
const latencies: number[] = [];
let measuring = false;
let stopped = false;
let errors = 0;

interface LoadState {
  received: number;
  sentAt: number;
}

function send(socket: Socket<LoadState>): void {
  socket.data.received = 0;
  socket.data.sentAt = performance.now();
  if (socket.write(message) !== size) errors++; // 64 bytes into an empty socket buffer: never short in practice
}

const sockets: Socket<LoadState>[] = [];
for (let i = 0; i < connections; i++) {
  sockets.push(
    await Bun.connect<LoadState>({
      hostname: values.host,
      port: Number(values.port),
      data: { received: 0, sentAt: 0 },
      socket: {
        data(socket, chunk) {
          socket.data.received += chunk.length;
          if (socket.data.received < size) return;
          if (measuring) latencies.push(performance.now() - socket.data.sentAt);
          if (!stopped) send(socket);
        },
        close() {
          if (!stopped) errors++;
        },
        error() {
          errors++;
        },
      },
    }),
  );
}

for (const socket of sockets) send(socket);
await Bun.sleep(Number(values.warmup) * 1000);
measuring = true;
const started = performance.now();
await Bun.sleep(Number(values.seconds) * 1000);
measuring = false;
const seconds = (performance.now() - started) / 1000;
stopped = true;
for (const socket of sockets) socket.end();

latencies.sort((a, b) => a - b);
const percentile = (p: number): number => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? NaN;
console.log(
  JSON.stringify({
    messages: latencies.length,
    seconds,
    msgsPerSec: latencies.length / seconds,
    p50Ms: percentile(0.5),
    p99Ms: percentile(0.99),
    errors,
  }),
);
process.exit(0);
