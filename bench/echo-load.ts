#!/usr/bin/env bun
// Closed-loop load for the echo benchmark (bench/echo.ts runs it against every server the same way).
//
// Each of --connections connections keeps --pipeline messages of --size bytes in flight: when the reply to one
// has fully arrived (TCP is a stream: replies are counted in bytes), it records that message's round-trip time and
// sends the next. With --pipeline 1 that is request/response; with a deeper pipeline and small messages it floods.
// Connections are ramped up in batches, each finishing its first exchange before the next batch opens, so a
// server's accept backlog never overflows. Results after --warmup, for --duration seconds, as JSON with --json.
// --hold: open the connections, print {"held": N}, keep them idle until stdin closes or SIGTERM, then reset them.
// Connections are closed with RST so that a run does not leave thousands of sockets in TIME_WAIT.

import type { Socket } from "bun";
import { flushQueue, sendQueued } from "../lib/sockets.ts";
import { commandLine, usageError } from "./lib.ts";

const HELP = `Usage: bun bench/echo-load.ts --port PORT [options]

Closed-loop echo load, the driver bench/echo.ts and bench/proxy.ts run against each server. Prints its result
(messages/s, reply MiB/s, round-trip percentiles, server CPU per message, problems seen) after --duration.

Options:
  --port PORT           the server's port (required)
  --host HOST           the server's address (default 127.0.0.1)
  --connections N       connections (default 100)
  --size BYTES          message size (default 64)
  --pipeline K          messages in flight per connection (default 1)
  --duration S          measured seconds (default 5)
  --warmup S            unmeasured seconds first (default 1)
  --batch N             connections opened per ramp step (default 100)
  --hold                open the connections, print {"held": N}, keep them idle until stdin ends or SIGTERM
  --json                the result as one JSON line
  --cpu-of PID,PID...   report the CPU time these processes (the server's) used in the measured window
  -h, --help            show this help
`;

const values = commandLine(HELP, {
  host: { type: "string", default: "127.0.0.1" },
  port: { type: "string" },
  connections: { type: "string", default: "100" },
  size: { type: "string", default: "64" },
  pipeline: { type: "string", default: "1" },
  duration: { type: "string", default: "5" },
  warmup: { type: "string", default: "1" },
  batch: { type: "string", default: "100" },
  hold: { type: "boolean", default: false },
  "cpu-of": { type: "string", default: "" },
  json: { type: "boolean", default: false },
});
if (values.port === undefined) usageError("--port is required");

const host = values.host;
const port = Number(values.port);
const connections = Number(values.connections);
const size = Number(values.size);
const pipeline = Number(values.pipeline);
const durationMs = Number(values.duration) * 1000;
const warmupMs = Number(values.warmup) * 1000;
const batch = Number(values.batch);
const cpuPids = values["cpu-of"].split(",").filter(Boolean).map(Number);

/** User + system CPU seconds used so far by the processes in `cpuPids` (all their threads), from /proc. */
async function serverCpuSeconds(): Promise<number> {
  let ticks = 0;
  for (const pid of cpuPids) {
    try {
      const stat = await Bun.file(`/proc/${pid}/stat`).text();
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      ticks += Number(fields[11]) + Number(fields[12]); // utime, stime (fields 14 and 15 of the line)
    } catch {
      // the process is gone: nothing to add
    }
  }
  return ticks / 100; // USER_HZ is 100 on Linux
}

// The message: lowercase letters, so every reply byte is checkable (byte i of a reply is 'A' + i % 26).
const message = new Uint8Array(size);
for (let i = 0; i < size; i++) message[i] = 0x61 + (i % 26);
const burst = new Uint8Array(size * pipeline);
for (let i = 0; i < pipeline; i++) burst.set(message, i * size);

interface Conn {
  /** Send times of the messages in flight, oldest first (a ring of `pipeline` slots). */
  sentAt: Float64Array;
  head: number;
  inFlight: number;
  /** Reply bytes received towards the message at the head. */
  partial: number;
  completed: number;
  unsent: Uint8Array[];
  /** Settles the ramp's wait for this connection's first exchange: true = replied, false = closed first. */
  firstReply: ((replied: boolean) => void) | undefined;
}

let measuring = false;
/** Whether a reply triggers the next message: not for held connections, which exchange one message only. */
let running = !values.hold;
let messages = 0;
let replyBytes = 0;
let wrongBytes = 0;
let unexpectedCloses = 0;
let latencies = new Float64Array(1 << 20);
let latencyCount = 0;

function record(us: number): void {
  if (latencyCount === latencies.length) {
    const bigger = new Float64Array(latencies.length * 2);
    bigger.set(latencies);
    latencies = bigger;
  }
  latencies[latencyCount++] = us;
}

function sendMessages(socket: Socket<Conn>, count: number, now: number): void {
  const conn = socket.data;
  for (let i = 0; i < count; i++) conn.sentAt[(conn.head + conn.inFlight + i) % pipeline] = now;
  conn.inFlight += count;
  sendQueued(socket, conn.unsent, count === pipeline ? burst : burst.subarray(0, count * size));
}

const sockets: Socket<Conn>[] = [];

async function open(): Promise<Socket<Conn>> {
  const conn: Conn = {
    sentAt: new Float64Array(pipeline),
    head: 0,
    inFlight: 0,
    partial: 0,
    completed: 0,
    unsent: [],
    firstReply: undefined,
  };
  return Bun.connect<Conn>({
    hostname: host,
    port,
    data: conn,
    socket: {
      data(socket, chunk) {
        const c = socket.data;
        // Check the first byte of every chunk: where it falls in its message tells what it must be.
        if (chunk[0] !== 0x41 + ((c.partial % size) % 26)) wrongBytes++;
        if (measuring) replyBytes += chunk.length;
        let bytes = c.partial + chunk.length;
        let done = 0;
        const now = performance.now();
        while (bytes >= size && c.inFlight > 0) {
          bytes -= size;
          if (measuring) record((now - c.sentAt[c.head]!) * 1000);
          c.head = (c.head + 1) % pipeline;
          c.inFlight--;
          done++;
        }
        c.partial = bytes;
        c.completed += done;
        if (measuring) messages += done;
        if (c.firstReply && c.completed > 0) {
          c.firstReply(true);
          c.firstReply = undefined;
        }
        if (running && done > 0) sendMessages(socket, done, now);
      },
      drain(socket) {
        flushQueue(socket, socket.data.unsent);
      },
      close(socket) {
        if (running) unexpectedCloses++;
        socket.data.firstReply?.(false);
        socket.data.firstReply = undefined;
      },
      error() {},
    },
  });
}

// A connection whose first exchange never completes (the server or a proxy in between lost it) must not hold the
// ramp, and so the whole run, forever: past this, the run stops with an error.
const RAMP_BATCH_TIMEOUT_MS = 15_000;

/** Opens every connection in batches; each does one exchange before the next batch starts. */
async function rampUp(): Promise<void> {
  for (let start = 0; start < connections; start += batch) {
    const opened = await Promise.all(Array.from({ length: Math.min(batch, connections - start) }, open));
    const firstExchanges = opened.map(
      (socket) =>
        new Promise<boolean>((settle) => {
          socket.data.firstReply = settle;
          sendMessages(socket, values.hold ? 1 : pipeline, performance.now());
        }),
    );
    let timer: Timer | undefined;
    const deadline = new Promise<"timeout">(
      (resolve) => (timer = setTimeout(() => resolve("timeout"), RAMP_BATCH_TIMEOUT_MS)),
    );
    const outcome = await Promise.race([Promise.all(firstExchanges), deadline]);
    clearTimeout(timer);
    const failed =
      outcome === "timeout"
        ? opened.filter((socket) => socket.data.firstReply).length
        : outcome.filter((ok) => !ok).length;
    if (failed > 0) {
      const why =
        outcome === "timeout" ? `no first reply within ${RAMP_BATCH_TIMEOUT_MS / 1000} s` : "closed before replying";
      process.stderr.write(`error: ${failed} of ${opened.length} connections in a ramp batch failed (${why})\n`);
      for (const socket of [...sockets, ...opened]) socket.terminate();
      process.exit(1);
    }
    sockets.push(...opened);
  }
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

const rampStart = performance.now();
await rampUp();
const rampMs = performance.now() - rampStart;

if (values.hold) {
  console.log(JSON.stringify({ held: sockets.length, rampMs: Math.round(rampMs) }));
  const release = (): void => {
    for (const socket of sockets) socket.terminate();
    process.exit(0);
  };
  process.on("SIGTERM", release);
  process.stdin.on("end", release);
  process.stdin.resume();
} else {
  await Bun.sleep(warmupMs);
  const completedBefore = sockets.map((socket) => socket.data.completed);
  const cpuBefore = await serverCpuSeconds();
  measuring = true;
  const start = performance.now();
  await Bun.sleep(durationMs);
  measuring = false;
  const elapsedS = (performance.now() - start) / 1000;
  const serverCpu = (await serverCpuSeconds()) - cpuBefore;
  running = false;
  const stalled = sockets.filter((socket, i) => socket.data.completed === completedBefore[i]).length;
  for (const socket of sockets) socket.terminate();
  const sorted = latencies.subarray(0, latencyCount).sort();
  const result = {
    connections,
    size,
    pipeline,
    seconds: Number(elapsedS.toFixed(3)),
    messages,
    msgsPerSec: Math.round(messages / elapsedS),
    replyMiBPerSec: Number((replyBytes / elapsedS / 1024 / 1024).toFixed(2)),
    latencyUs: {
      p50: Math.round(percentile(sorted, 50)),
      p90: Math.round(percentile(sorted, 90)),
      p99: Math.round(percentile(sorted, 99)),
      max: Math.round(sorted[sorted.length - 1] ?? 0),
    },
    serverCpuSeconds: cpuPids.length > 0 ? Number(serverCpu.toFixed(2)) : null,
    serverCpuUsPerMsg: cpuPids.length > 0 && messages > 0 ? Number(((serverCpu * 1e6) / messages).toFixed(2)) : null,
    rampMs: Math.round(rampMs),
    wrongBytes,
    unexpectedCloses,
    stalled,
  };
  if (values.json) console.log(JSON.stringify(result));
  else console.log(result);
  process.exit(0);
}
