#!/usr/bin/env bun
// Is test/003-load-generator.ts the bottleneck? Runs it (A) and bench/minimal-client.ts (B) against the same echo
// server, alternately, so that noise from the machine and any drift fall on both alike. The help text below says
// what it prints and how long it takes. Not a test: `bun run bench:client`.

import { existsSync } from "node:fs";
import { loadavg } from "node:os";
import { resolve } from "node:path";
import {
  canPin,
  commandLine,
  lastStage,
  median,
  numberOption,
  onCpu,
  quantile,
  ROOT,
  startListening,
  stop,
  usageError,
} from "./lib.ts";

const HELP = `Usage: bun run bench:client [options]        (or: bun bench/loadgen-vs-minimal.ts [options])

Is the load generator (test/003-load-generator.ts) the bottleneck? Runs it (A) and bench/minimal-client.ts (B), a
client that only sends and counts, against the same echo server with the same connections, message size, warmup
and duration, in the order A B B A A B B A ..., so that noise from the machine falls on both alike. For each
connection count it prints a Markdown table row: msgs/s of every run, the ratio of the medians, the median of
the ratios of neighbouring A/B pairs, and each client's CPU time per message. A ratio of 1.0 or more means the
generator, which checks every byte and times every message, drives the server as hard as a client that does
nothing else.

Run time: connection counts x 2 x rounds x (warmup + duration), plus about 0.3 s to start each client: about
4 minutes with the defaults; -c 50 --rounds 2 takes about 12 s.

Then the open-loop client, test/005-open-loop-load.ts, against the same server in the same run: the highest
--rate it holds within 1% (achieved msgs/s at least 99% of the requested rate), searched upwards from half the
closed-loop median at the largest -c and then bisected, and the CPU time it spends per message at --fixed-rate,
next to the closed-loop clients' CPU per message at full speed.

Writes no file: the tables go to stdout (the README quotes them).

Options:
  --server FILE        the echo server (default: the highest-numbered echo stage from 005 on; the earlier
                       ones serve one client at a time)
  -c, --connections N,N,...  connection counts, one table row each (default 1,10,50,200)
  -d, --duration S     measured seconds per run (default 2)
  --warmup S           unmeasured seconds before each run (default 0.5)
  --rounds N           runs of each client per connection count (default 10)
  -s, --size BYTES     message size (default 64)
  --pin                server on CPU 0, clients on CPU 1 (needs taskset and 2 cores); without it the
                       scheduler places them, which is fairer on a machine that other work shares
  --fixed-rate N       msgs/s at which the open-loop client's CPU per message is measured (default 20000)
  --no-open-loop       skip the open-loop measurements
  -h, --help           show this help
`;

const values = commandLine(HELP, {
  server: { type: "string" },
  connections: { type: "string", short: "c", default: "1,10,50,200" },
  duration: { type: "string", short: "d", default: "2" },
  warmup: { type: "string", default: "0.5" },
  rounds: { type: "string", default: "10" },
  size: { type: "string", short: "s", default: "64" },
  pin: { type: "boolean", default: false },
  "fixed-rate": { type: "string", default: "20000" },
  "no-open-loop": { type: "boolean", default: false },
});
numberOption("--duration", values.duration, { min: 0.1 });
numberOption("--warmup", values.warmup);
numberOption("--size", values.size, { min: 1, integer: true });
numberOption("--fixed-rate", values["fixed-rate"], { min: 1 });
for (const count of values.connections.split(",")) numberOption("--connections", count, { min: 1, integer: true });
if (values.server !== undefined && !existsSync(resolve(ROOT, values.server)))
  usageError(`--server: no such file "${values.server}"`);

const PIN = values.pin && canPin;

async function startServer(file: string): Promise<{ port: number; stop: () => Promise<void> }> {
  const { child, port } = await startListening(
    onCpu(0, [process.execPath, file, "--port", "0", "--log-level", "error"], PIN),
    file,
  );
  return { port, stop: () => stop(child) };
}

interface RunResult {
  messagesPerSecond: number;
  /** Client CPU microseconds per message over the measured window. */
  cpuMicrosPerMessage: number;
}

async function runClient(args: string[]): Promise<RunResult> {
  const proc = Bun.spawn(onCpu(1, [process.execPath, ...args], PIN), {
    cwd: ROOT,
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, NO_COLOR: "1" },
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  if (code !== 0) throw new Error(`${args.join(" ")} exited ${code}:\n${stdout}\n${stderr}`);
  const result = JSON.parse(stdout) as {
    messagesPerSecond: number;
    clientCpu: { total: number };
    errors?: { total: number };
  };
  if (result.errors && result.errors.total !== 0)
    throw new Error(`${args[0]} saw ${result.errors.total} errors:\n${stdout}`);
  return {
    messagesPerSecond: result.messagesPerSecond,
    cpuMicrosPerMessage: (result.clientCpu.total / result.messagesPerSecond) * 1e6,
  };
}

const thousands = (x: number): string => Math.round(x).toLocaleString("en-US");

// From 005 on: the earlier stages serve one client at a time.
const serverFile = values.server ?? lastStage("tcp_echo_server", 5);
const connectionCounts = values.connections.split(",").map(Number);
const rounds = numberOption("--rounds", values.rounds, { min: 1, integer: true });
const common = ["-d", values.duration, "--warmup", values.warmup, "-s", values.size];

console.log(
  `server: ${serverFile}; ${values.size}-byte messages, ${values.warmup}s warmup + ${values.duration}s per run, ` +
    `${rounds} rounds of A (load generator) and B (minimal client), ordered A B B A ...` +
    (PIN ? "; server on CPU 0, clients on CPU 1" : ""),
);
console.log("");
console.log(
  "| connections | A msgs/s (runs) | B msgs/s (runs) | A/B, medians | A/B, median of pairs (middle half) " +
    "| CPU µs/msg A, B |",
);
console.log("|---|---|---|---|---|---|");
const server = await startServer(serverFile);
/** Median msgs/s and CPU µs per message of the closed-loop clients, at the largest connection count. */
let closedLoop: { connections: number; a: RunResult; b: RunResult } | undefined;
try {
  for (const connections of connectionCounts) {
    const a: RunResult[] = [];
    const b: RunResult[] = [];
    const port = String(server.port);
    const runA = async (): Promise<void> => {
      a.push(
        await runClient(["test/003-load-generator.ts", "--port", port, "-c", String(connections), ...common, "--json"]),
      );
    };
    const runB = async (): Promise<void> => {
      b.push(await runClient(["bench/minimal-client.ts", "--port", port, "-c", String(connections), ...common]));
    };
    for (let round = 0; round < rounds; round++) {
      if (round % 2 === 0) {
        await runA();
        await runB();
      } else {
        await runB();
        await runA();
      }
    }
    const rateA = a.map((r) => r.messagesPerSecond);
    const rateB = b.map((r) => r.messagesPerSecond);
    const ratioOfMedians = median(rateA) / median(rateB);
    const pairs = rateA.map((x, i) => x / rateB[i]!);
    const medianOfPairs = median(pairs);
    const middleHalf = `${quantile(pairs, 0.25).toFixed(2)}-${quantile(pairs, 0.75).toFixed(2)}`;
    const cpuA = median(a.map((r) => r.cpuMicrosPerMessage));
    const cpuB = median(b.map((r) => r.cpuMicrosPerMessage));
    console.log(
      `| ${connections} | ${rateA.map(thousands).join(", ")} | ${rateB.map(thousands).join(", ")} | ` +
        `${ratioOfMedians.toFixed(2)}x | ${medianOfPairs.toFixed(2)}x (${middleHalf}) | ` +
        `${cpuA.toFixed(2)}, ${cpuB.toFixed(2)} |`,
    );
    closedLoop = {
      connections,
      a: { messagesPerSecond: median(rateA), cpuMicrosPerMessage: cpuA },
      b: { messagesPerSecond: median(rateB), cpuMicrosPerMessage: cpuB },
    };
  }
  if (!values["no-open-loop"] && closedLoop) await openLoopSection(String(server.port), closedLoop);
} finally {
  await server.stop();
}

// ---------------------------------------------------------------------------------------------------------------
// The open-loop client (test/005-open-loop-load.ts) against the same server, after the closed-loop rounds.

/** One open-loop run at `rate` msgs/s with the closed-loop runs' connections, message size, warmup and duration. */
async function openLoopRun(port: string, rate: number, connections: number): Promise<RunResult & { held: boolean }> {
  // 16 in flight per connection: room for the server's latency at any rate it can serve, so that what limits the
  // client is the client (or the server), not its --pipeline bound.
  const args = ["--rate", String(Math.round(rate)), "-c", String(connections), "--pipeline", "16"];
  const result = await runClient(["test/005-open-loop-load.ts", "--port", port, ...args, ...common, "--json"]);
  return { ...result, held: result.messagesPerSecond >= rate * 0.99 };
}

/**
 * The highest rate held within 1%: up from `start` by 15% a step until a run falls short, then three bisections
 * between the last rate held and the first missed. One run per rate, so a noisy machine makes it conservative.
 */
async function highestHeldRate(
  port: string,
  start: number,
  connections: number,
): Promise<{ rate: number; run: RunResult }> {
  let held: { rate: number; run: RunResult } | undefined;
  let missed: number | undefined;
  for (let rate = start, step = 0; step < 15 && missed === undefined; rate *= 1.15, step++) {
    const run = await openLoopRun(port, rate, connections);
    if (run.held) held = { rate, run };
    else missed = rate;
  }
  if (held === undefined) return highestHeldRate(port, start / 2, connections);
  for (let i = 0; i < 3 && missed !== undefined; i++) {
    const rate: number = (held.rate + missed) / 2;
    const run = await openLoopRun(port, rate, connections);
    if (run.held) held = { rate, run };
    else missed = rate;
  }
  return held;
}

async function openLoopSection(
  port: string,
  closed: { connections: number; a: RunResult; b: RunResult },
): Promise<void> {
  const { connections } = closed;
  const fixedRate = Number(values["fixed-rate"]);
  const highest = await highestHeldRate(port, closed.a.messagesPerSecond / 2, connections);
  const fixed = await openLoopRun(port, fixedRate, connections);
  const row = (client: string, inFlight: number, rate: string, run: RunResult): string =>
    `| ${client} | ${inFlight} | ${rate} | ${thousands(run.messagesPerSecond)} | ` +
    `${run.cpuMicrosPerMessage.toFixed(2)} |`;
  console.log("");
  console.log(
    `Open loop against the same server, ${connections} connections (load average ${loadavg()[0]!.toFixed(1)}):`,
  );
  console.log("");
  console.log("| client | most in flight per connection | requested msgs/s | achieved msgs/s | CPU µs/msg |");
  console.log("|---|---|---|---|---|");
  console.log(row("003 closed loop (median above)", 1, "-", closed.a));
  console.log(row("minimal closed loop (median above)", 1, "-", closed.b));
  console.log(row("005 open loop, highest rate held within 1%", 16, thousands(highest.rate), highest.run));
  console.log(row("005 open loop, fixed rate", 16, thousands(fixedRate), fixed));
  if (!fixed.held) console.log(`(the fixed rate was not held: ${thousands(fixed.messagesPerSecond)} msgs/s)`);
}
