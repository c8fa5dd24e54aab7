#!/usr/bin/env bun
// A test fixture, not a stage: an uppercase echo server that stalls. Every --stall-every seconds the whole process
// freezes for --stall-for seconds (Bun.sleepSync: no accept, no read, no write), as a stop-the-world GC pause, a
// swapped-out page or a ^Z on the server would (wrk2's README makes its point with a ^Z). Bytes that arrive
// meanwhile wait in the kernel and are answered, in order, when it wakes. It is what test/005-open-loop-load.ts
// demonstrates coordinated omission with, by hand and in its tests.
//
// The clock starts at the first byte of a run (received while no other connection was open), and the first stall
// comes half a period later: with --stall-every 5 --stall-for 1 it is frozen over 2.5-3.5 s, 7.5-8.5 s, ... after
// the load starts, so a 5 s run sees exactly one stall, in its middle, whatever the client's start-up time; once
// every connection has closed, the next run starts the clock again.
//
//   bun test/support/stalling-echo.ts --port 5000 --stall-every 5 --stall-for 1
//   echo hello | nc -N 127.0.0.1 5000
//
// Prints `listening on HOST:PORT` on stdout like the echo stages; each stall is one line on stderr.

import type { Socket } from "bun";
import { relative } from "node:path";
import { parseArgs } from "node:util";

const THIS_FILE = relative(process.cwd(), import.meta.path);
const HELP = `Usage: bun ${THIS_FILE} [--host 127.0.0.1] [--port 5000] [--stall-every 5] [--stall-for 1]

An uppercase echo server that freezes for --stall-for seconds every --stall-every seconds (the first stall
half a period after the first byte arrives). Seconds may be fractions.
`;

function fail(message: string): never {
  process.stderr.write(`error: ${message} (see --help)\n`);
  process.exit(2);
}

let values;
try {
  ({ values } = parseArgs({
    options: {
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "5000" },
      "stall-every": { type: "string", default: "5" },
      "stall-for": { type: "string", default: "1" },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  }));
} catch (error) {
  fail((error as Error).message.split("\n")[0]!);
}
if (values.help) {
  process.stdout.write(HELP);
  process.exit(0);
}
const seconds = (name: string, text: string): number => {
  if (!/^\d+(\.\d+)?$/.test(text) || Number(text) <= 0) fail(`${name} must be a number of seconds above 0`);
  return Number(text);
};
const stallEvery = seconds("--stall-every", values["stall-every"]);
const stallFor = seconds("--stall-for", values["stall-for"]);
if (stallFor >= stallEvery) fail("--stall-for must be shorter than --stall-every");
if (!/^\d+$/.test(values.port) || Number(values.port) > 65535) fail("--port must be an integer from 0 to 65535");

/** Replies the kernel has not taken yet, per connection (Bun's write() does not buffer). */
interface Conn {
  queue: Buffer[];
}

function upper(chunk: Buffer): Buffer {
  const out = Buffer.from(chunk);
  for (let i = 0; i < out.length; i++) if (out[i]! >= 0x61 && out[i]! <= 0x7a) out[i] = out[i]! - 0x20;
  return out;
}

function flush(socket: Socket<Conn>): void {
  const queue = socket.data.queue;
  while (queue.length > 0) {
    const head = queue[0]!;
    const written = socket.write(head);
    if (written < 0) return void (queue.length = 0); // closed
    if (written < head.length) {
      queue[0] = head.subarray(written);
      socket.pause(); // read no more from this client until its replies are out
      return;
    }
    queue.shift();
  }
  socket.resume();
}

let startMs = 0;
let stalls = 0;
let connections = 0;
let stallTimer: Timer | undefined;

function scheduleStall(): void {
  const dueMs = startMs + (stalls + 0.5) * stallEvery * 1000;
  stallTimer = setTimeout(
    () => {
      stalls++;
      const at = ((performance.now() - startMs) / 1000).toFixed(2);
      process.stderr.write(`stall ${stalls}: frozen for ${Math.round(stallFor * 1000)} ms from ${at} s\n`);
      Bun.sleepSync(stallFor * 1000);
      scheduleStall();
    },
    Math.max(0, dueMs - performance.now()),
  );
}

const listener = Bun.listen<Conn>({
  hostname: values.host,
  port: Number(values.port),
  socket: {
    open(socket) {
      socket.data = { queue: [] };
      connections++;
    },
    close(socket) {
      if (socket.data === undefined) return; // never opened (a reset before the accept completed)
      if (--connections > 0) return;
      clearTimeout(stallTimer); // the run is over: the next one starts the clock again
      startMs = 0;
      stalls = 0;
    },
    data(socket, chunk) {
      if (startMs === 0) {
        startMs = performance.now();
        scheduleStall();
      }
      socket.data.queue.push(upper(chunk));
      if (socket.data.queue.length === 1) flush(socket);
    },
    drain(socket) {
      flush(socket);
    },
    error() {},
  },
});
const host = listener.hostname.includes(":") ? `[${listener.hostname}]` : listener.hostname;
process.stdout.write(`listening on ${host}:${listener.port}\n`);
process.on("SIGINT", () => process.exit(0));
process.on("SIGTERM", () => process.exit(0));
