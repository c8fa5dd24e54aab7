#!/usr/bin/env bun
// The yardstick for test/003-load-generator.ts: the least a closed-loop Bun.connect echo client can do. Each of -c
// connections sends one fixed message, counts reply bytes, and sends the message again once a whole reply is in.
// No verification, no timing per message, no error handling beyond giving up; a short write is not retried (the
// messages are far smaller than a socket buffer). Prints {"messages", "elapsedSeconds", "messagesPerSecond",
// "clientCpu"} as JSON; clientCpu is the share of one core used while measuring, as the load generator reports it.
//
//   bun bench/minimal-client.ts --port 5000 -c 50 -d 5 -s 64 --warmup 1

import type { Socket } from "bun";
import { commandLine } from "./lib.ts";

const HELP = `Usage: bun bench/minimal-client.ts --port PORT [-c N] [-d S] [-s BYTES] [--warmup S] [--host HOST]

The yardstick bench/loadgen-vs-minimal.ts compares the load generator with: -c connections each send one
-s byte message and send it again once its whole reply is in, for --warmup then -d seconds; prints
{"messages", "elapsedSeconds", "messagesPerSecond", "clientCpu"} as JSON.
`;

const values = commandLine(HELP, {
  host: { type: "string", default: "127.0.0.1" },
  port: { type: "string", default: "5000" },
  connections: { type: "string", short: "c", default: "10" },
  duration: { type: "string", short: "d", default: "5" },
  size: { type: "string", short: "s", default: "64" },
  warmup: { type: "string", default: "0" },
});
const connections = Number(values.connections);
const size = Number(values.size);
const message = Buffer.alloc(size, "a");

let answered = 0;
let running = true;

const handlers = {
  data(socket: Socket<{ bytes: number }>, chunk: Buffer) {
    const state = socket.data;
    state.bytes += chunk.length;
    while (state.bytes >= size) {
      state.bytes -= size;
      answered++;
      if (running) socket.write(message);
    }
  },
};

const sockets: Array<Socket<{ bytes: number }>> = [];
for (let i = 0; i < connections; i++) {
  sockets.push(
    await Bun.connect({ hostname: values.host, port: Number(values.port), data: { bytes: 0 }, socket: handlers }),
  );
}
for (const socket of sockets) socket.write(message);

await Bun.sleep(Number(values.warmup) * 1000);
const startCount = answered;
const start = performance.now();
const cpuAtStart = process.cpuUsage();
await Bun.sleep(Number(values.duration) * 1000);
const messages = answered - startCount;
const elapsedSeconds = (performance.now() - start) / 1000;
const cpu = process.cpuUsage(cpuAtStart);
running = false;
for (const socket of sockets) socket.end();
const clientCpu = {
  user: cpu.user / 1e6 / elapsedSeconds,
  system: cpu.system / 1e6 / elapsedSeconds,
  total: (cpu.user + cpu.system) / 1e6 / elapsedSeconds,
};
process.stdout.write(
  `${JSON.stringify({ messages, elapsedSeconds, messagesPerSecond: messages / elapsedSeconds, clientCpu })}\n`,
);
process.exit(0);
