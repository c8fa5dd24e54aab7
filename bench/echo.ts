#!/usr/bin/env bun
// Echo benchmark (not a test): the last echo stage and stage 005 against two references kept in bench/reference/
// (a minimal Bun.listen echo and a Node.js node:net echo), under the same load, side by side, in one run. The
// help text below says what it measures, how long it takes and where it writes.

import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { join, resolve } from "node:path";
import {
  canPin,
  commandLine,
  descendants,
  lastStage,
  median,
  memoryKiB,
  numberOption,
  onCpu,
  ROOT,
  spawn,
  startListening,
  stop,
  waitForLine,
} from "./lib.ts";
import { stageFiles } from "../lib/stages.ts";

const HELP = `Usage: bun bench/echo.ts [options]        (or: bun run bench echo [options])

Echo benchmark, not a test: the last echo stage and stage 005 against a minimal Bun.listen echo and a Node.js
node:net echo (bench/reference/), each under the same closed-loop load (bench/echo-load.ts):
  100 / 1000 connections  one 64-byte message in flight per connection: messages/s, p50 and p99 round trip
  flood                   10 connections with 128 messages in flight each: echo bandwidth, MiB/s
  held                    --held idle connections: KiB of server memory per connection
and each server's peak memory and CPU time per message (from /proc). With taskset and two cores the server runs
on CPU 0 and the load on CPU 1. Every server is measured --rounds times, interleaved, and the median is kept.

Run time: per server and round, 3 x (warmup + seconds) plus about 4 s (start, held connections): 5-6 minutes
with the defaults for 4 servers; --rounds 1 --seconds 1 takes about 45 s.

Writes echo.json and echo.svg to --out-dir, by default bench/results/: that REPLACES the committed results the
README shows. To keep them, write elsewhere: --out-dir /tmp/bench.

Options:
  --seconds S     measured seconds per scenario and round (default 3)
  --warmup S      unmeasured seconds before each scenario (default 1)
  --rounds N      rounds per server, the median is kept (default 5)
  --held N        idle connections for the memory measure (default 10000)
  --out-dir DIR   where echo.json and echo.svg go (default bench/results)
  --chart-only    measure nothing: redraw echo.svg from the echo.json in --out-dir
  -h, --help      show this help
`;

const values = commandLine(HELP, {
  seconds: { type: "string", default: "3" },
  warmup: { type: "string", default: "1" },
  rounds: { type: "string", default: "5" },
  held: { type: "string", default: "10000" },
  "out-dir": { type: "string", default: "bench/results" },
  "chart-only": { type: "boolean", default: false },
});
const SECONDS = numberOption("--seconds", values.seconds, { min: 0.1 });
const WARMUP = numberOption("--warmup", values.warmup);
const ROUNDS = numberOption("--rounds", values.rounds, { min: 1, integer: true });
const HELD = numberOption("--held", values.held, { min: 1, integer: true });
const OUT_DIR = resolve(ROOT, values["out-dir"]);

const LAST_STAGE = lastStage("tcp_echo_server");
/** Stage 005, found by its number: the end of the original Python series, before any of the hardening. */
const SERIES_END = `tcp_echo_server/${stageFiles("tcp_echo_server").find((name) => name.startsWith("005-"))}`;
const which = (tool: string): string | null => Bun.which(tool);
const pinning = canPin;

interface Server {
  name: string;
  command: string[];
}

const SERVERS: Server[] = [
  { name: "Bun minimal", command: [process.execPath, "bench/reference/bun-echo.ts"] },
  ...(which("node") ? [{ name: "Node net", command: ["node", "bench/reference/node-echo.mjs"] }] : []),
  {
    name: "stage 005",
    command: [process.execPath, SERIES_END, "--max-clients", "20000", "--idle-timeout", "0", "--log-level", "warn"],
  },
  {
    name: `stage ${LAST_STAGE.match(/(\d{3})-/)![1]}`,
    command: [process.execPath, LAST_STAGE, "--max-clients", "20000", "--log-level", "warn"],
  },
];
const STAGE_NAME = SERVERS.at(-1)!.name;

interface Scenario {
  name: string;
  args: string[];
}

const SCENARIOS: Scenario[] = [
  { name: "100 connections", args: ["--connections", "100", "--size", "64", "--pipeline", "1"] },
  { name: "1000 connections", args: ["--connections", "1000", "--size", "64", "--pipeline", "1"] },
  { name: "flood", args: ["--connections", "10", "--size", "64", "--pipeline", "128"] },
];

/** What bench/echo-load.ts prints with --json. */
interface LoadResult {
  msgsPerSec: number;
  replyMiBPerSec: number;
  latencyUs: { p50: number; p90: number; p99: number; max: number };
  serverCpuUsPerMsg: number | null;
  wrongBytes: number;
  unexpectedCloses: number;
  stalled: number;
}

interface Measurement {
  scenarios: Record<string, LoadResult>;
  peakRssKiB: number;
  kibPerHeldConnection: number;
  processes: number;
}

function loadCommand(port: number, args: string[]): string[] {
  return onCpu(1, [process.execPath, "bench/echo-load.ts", "--port", String(port), ...args]);
}

async function runLoad(port: number, pids: number[], scenario: Scenario): Promise<LoadResult> {
  const args = [
    ...scenario.args,
    "--duration",
    String(SECONDS),
    "--warmup",
    String(WARMUP),
    "--json",
    "--cpu-of",
    pids.join(","),
  ];
  const load = spawn(loadCommand(port, args));
  const [output, code] = await Promise.all([new Response(load.stdout).text(), load.exited]);
  if (code !== 0)
    throw new Error(`load for ${scenario.name} exited ${code}: ${output}${await new Response(load.stderr).text()}`);
  return JSON.parse(output) as LoadResult;
}

/** Opens HELD idle connections and returns the server's RSS growth per connection, KiB. */
async function heldConnections(port: number, pids: number[]): Promise<number> {
  await Bun.sleep(500); // let the previous load's sockets close
  const before = memoryKiB(pids).rss;
  const load = spawn(loadCommand(port, ["--connections", String(HELD), "--hold"]), "pipe");
  await waitForLine(load, /"held":\d+/, "held connections", 120_000);
  await Bun.sleep(1000);
  const after = memoryKiB(pids).rss;
  void load.stdin?.end(); // the load resets its connections and exits
  await load.exited;
  return (after - before) / HELD;
}

async function measure(server: Server): Promise<Measurement> {
  const { child, port } = await startListening(onCpu(0, [...server.command, "--port", "0"]), server.name);
  try {
    await Bun.sleep(200); // workers settle
    const pids = [child.pid, ...descendants(child.pid)];
    const scenarios: Record<string, LoadResult> = {};
    for (const scenario of SCENARIOS) scenarios[scenario.name] = await runLoad(port, pids, scenario);
    const peakRssKiB = memoryKiB(pids).peak;
    const kibPerHeldConnection = await heldConnections(port, pids);
    return { scenarios, peakRssKiB, kibPerHeldConnection, processes: pids.length };
  } finally {
    await stop(child);
  }
}

const round = (value: number, digits = 2): number => Number(value.toFixed(digits));

interface ScenarioSummary {
  msgsPerSec: number;
  replyMiBPerSec: number;
  p50Us: number;
  p99Us: number;
  serverCpuUsPerMsg: number;
  /** Wrong reply bytes, unexpected closes and stalled connections, over all rounds: 0 when all went well. */
  problems: number;
}

/** Median over rounds of every number in the scenario results. */
function summarise(runs: Measurement[]) {
  const scenarios: Record<string, ScenarioSummary> = {};
  for (const { name } of SCENARIOS) {
    const pick = (get: (r: LoadResult) => number): number => median(runs.map((run) => get(run.scenarios[name]!)));
    scenarios[name] = {
      msgsPerSec: Math.round(pick((r) => r.msgsPerSec)),
      replyMiBPerSec: round(pick((r) => r.replyMiBPerSec)),
      p50Us: Math.round(pick((r) => r.latencyUs.p50)),
      p99Us: Math.round(pick((r) => r.latencyUs.p99)),
      serverCpuUsPerMsg: round(
        pick((r) => r.serverCpuUsPerMsg ?? NaN),
        3,
      ),
      problems: runs.reduce(
        (sum, run) =>
          sum + run.scenarios[name]!.wrongBytes + run.scenarios[name]!.unexpectedCloses + run.scenarios[name]!.stalled,
        0,
      ),
    };
  }
  return {
    scenarios,
    peakRssMiB: round(median(runs.map((run) => run.peakRssKiB)) / 1024, 1),
    kibPerHeldConnection: round(median(runs.map((run) => run.kibPerHeldConnection))),
    processes: runs[0]!.processes,
    rounds: runs.map((run) => ({
      msgsPerSec: Object.fromEntries(SCENARIOS.map(({ name }) => [name, run.scenarios[name]!.msgsPerSec])),
      kibPerHeldConnection: round(run.kibPerHeldConnection),
    })),
  };
}

type Summary = ReturnType<typeof summarise>;

// ---------------------------------------------------------------------------------------------------------------
// The chart: one panel per measure, one bar per server, the stage's ratio to the minimal reference on top.

const COLOURS = ["#8c8c8c", "#6a9955", "#d19a66", "#4f7cc9"];

/** ` name="value"` for each attribute, in order. */
function attributes(values: Record<string, string | number>): string {
  return Object.entries(values)
    .map(([name, value]) => ` ${name}="${value}"`)
    .join("");
}

/** An SVG element: self-closing without `text`. */
function tag(name: string, values: Record<string, string | number>, text?: string): string {
  return text === undefined ? `<${name}${attributes(values)}/>` : `<${name}${attributes(values)}>${text}</${name}>`;
}

function escape(text: string): string {
  return text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
}

function chart(
  results: Record<string, Summary>,
  meta: { date: string; pinned: boolean; load: number; rounds: number },
): string {
  // From the results, not from SERVERS: --chart-only redraws results saved when the last stage had another number.
  const names = Object.keys(results);
  const stageName = names.at(-1)!;
  const panels: Array<{
    title: string;
    unit: string;
    better: "higher" | "lower";
    value: (s: Summary) => number;
    target?: string;
  }> = [
    {
      title: "100 connections",
      unit: "msgs/s",
      better: "higher",
      value: (s) => s.scenarios["100 connections"]!.msgsPerSec,
      target: ">= 1.0x",
    },
    {
      title: "1,000 connections",
      unit: "msgs/s",
      better: "higher",
      value: (s) => s.scenarios["1000 connections"]!.msgsPerSec,
      target: ">= 1.0x",
    },
    {
      title: "flood: 10 conns x 128 in flight",
      unit: "MiB/s echoed",
      better: "higher",
      value: (s) => s.scenarios.flood!.replyMiBPerSec,
      target: ">= 1.4x",
    },
    {
      title: "10,000 held connections",
      unit: "KiB per connection",
      better: "lower",
      value: (s) => s.kibPerHeldConnection,
      target: "<= 2 KiB",
    },
  ];
  const panelWidth = 230;
  const panelHeight = 220;
  const top = 70;
  const width = panels.length * panelWidth + 20;
  const height = top + panelHeight + 125;
  const middle = (x0: number) => x0 + panelWidth / 2;
  const out: string[] = [];
  const svg = { xmlns: "http://www.w3.org/2000/svg", width, height, viewBox: `0 0 ${width} ${height}` };
  out.push(`<svg${attributes({ ...svg, "font-family": "sans-serif", "font-size": 12 })}>`);
  out.push(tag("rect", { width, height, fill: "#ffffff" }));
  const title = `Echo servers, same load, one run (median of ${meta.rounds} rounds)`;
  out.push(tag("text", { x: 10, y: 22, "font-size": 16, "font-weight": "bold" }, title));
  const pinned = meta.pinned ? ", server on CPU 0, load on CPU 1" : "";
  const machine = `${meta.date.slice(0, 10)}, ${cpus().length} cores${pinned}, load average ${meta.load.toFixed(1)}`;
  out.push(tag("text", { x: 10, y: 42, fill: "#555" }, escape(`${machine}; ratio = ${stageName} / Bun minimal`)));
  panels.forEach((panel, p) => {
    const x0 = 10 + p * panelWidth;
    const values = names.map((name) => panel.value(results[name]!));
    const max = Math.max(...values) * 1.15 || 1;
    const barWidth = (panelWidth - 50) / names.length;
    const heading = { x: middle(x0), y: top - 8, "text-anchor": "middle", "font-weight": "bold" };
    out.push(tag("text", heading, escape(panel.title)));
    const baseline = top + panelHeight;
    out.push(tag("line", { x1: x0 + 10, y1: baseline, x2: x0 + panelWidth - 20, y2: baseline, stroke: "#999" }));
    values.forEach((value, i) => {
      const h = (value / max) * (panelHeight - 20);
      const x = x0 + 15 + i * barWidth;
      const y = top + panelHeight - h;
      const bar = { x: x.toFixed(1), y: y.toFixed(1), width: (barWidth - 6).toFixed(1), height: h.toFixed(1) };
      out.push(tag("rect", { ...bar, fill: COLOURS[i % COLOURS.length]! }));
      const label =
        value >= 10_000 ? `${(value / 1000).toFixed(0)}k` : value >= 100 ? value.toFixed(0) : value.toFixed(2);
      const above = { x: (x + (barWidth - 6) / 2).toFixed(1), y: (y - 4).toFixed(1), "text-anchor": "middle" };
      out.push(tag("text", { ...above, "font-size": 11 }, label));
    });
    const stage = panel.value(results[stageName]!);
    const reference = panel.value(results["Bun minimal"]!);
    const ratio = panel.better === "lower" ? `${stage.toFixed(2)} KiB` : `${(stage / reference).toFixed(2)}x`;
    const below = (dy: number) => ({ x: middle(x0), y: top + panelHeight + dy, "text-anchor": "middle" });
    out.push(tag("text", { ...below(20), fill: "#555" }, escape(panel.unit)));
    const stageRatio = escape(`${stageName}: ${ratio}`);
    out.push(tag("text", { ...below(40), "font-weight": "bold", fill: COLOURS[3]! }, stageRatio));
    out.push(tag("text", { ...below(56), fill: "#555" }, escape(`target ${panel.target}`)));
  });
  const legendY = top + panelHeight + 84;
  names.forEach((name, i) => {
    const x = 10 + i * 170;
    out.push(tag("rect", { x, y: legendY, width: 12, height: 12, fill: COLOURS[i % COLOURS.length]! }));
    out.push(tag("text", { x: x + 18, y: legendY + 11 }, escape(name)));
  });
  const note = "msgs/s: 64-byte messages, one in flight per connection. Higher is better, except KiB per connection.";
  out.push(tag("text", { x: 10, y: legendY + 32, fill: "#555" }, escape(note)));
  out.push("</svg>");
  return `${out.join("\n")}\n`;
}

// ---------------------------------------------------------------------------------------------------------------

if (values["chart-only"]) {
  const saved = JSON.parse(readFileSync(join(OUT_DIR, "echo.json"), "utf8")) as {
    date: string;
    machine: { pinned: boolean; loadBefore: number; loadAfter: number };
    config: { rounds: number };
    results: Record<string, Summary>;
  };
  const { date, machine, config, results } = saved;
  writeFileSync(
    join(OUT_DIR, "echo.svg"),
    chart(results, {
      date,
      pinned: machine.pinned,
      load: (machine.loadBefore + machine.loadAfter) / 2,
      rounds: config.rounds,
    }),
  );
  console.log(`redrew ${join(values["out-dir"], "echo.svg")} from echo.json`);
  process.exit(0);
}

const started = Date.now();
const loadBefore = loadavg()[0]!;
console.log(
  `echo bench: ${SERVERS.map((s) => s.name).join(", ")}; ${ROUNDS} round(s) of ${SECONDS} s per scenario; ` +
    `${cpus().length} cores, ${pinning ? "server on CPU 0, load on CPU 1" : "no pinning"}; ` +
    `load average ${loadBefore.toFixed(2)}`,
);
const runs: Record<string, Measurement[]> = Object.fromEntries(SERVERS.map((server) => [server.name, []]));
for (let r = 1; r <= ROUNDS; r++) {
  for (const server of SERVERS) {
    const result = await measure(server);
    runs[server.name]!.push(result);
    const cells = SCENARIOS.map(({ name }) => `${name} ${result.scenarios[name]!.msgsPerSec} msgs/s`).join(", ");
    console.log(
      `round ${r} ${server.name.padEnd(12)} ${cells}, flood ${result.scenarios.flood!.replyMiBPerSec} MiB/s, ` +
        `held ${result.kibPerHeldConnection.toFixed(2)} KiB/conn`,
    );
  }
}

const results = Object.fromEntries(SERVERS.map((server) => [server.name, summarise(runs[server.name]!)]));
const stage = results[STAGE_NAME]!;
const reference = results["Bun minimal"]!;
const ratio = (scenario: string, field: "msgsPerSec" | "replyMiBPerSec"): number =>
  round(stage.scenarios[scenario]![field]! / reference.scenarios[scenario]![field]!);
const targets = {
  "msgs/s at 100 connections vs Bun minimal (>= 1.0)": ratio("100 connections", "msgsPerSec"),
  "msgs/s at 1000 connections vs Bun minimal (>= 1.0)": ratio("1000 connections", "msgsPerSec"),
  "flood bandwidth vs Bun minimal (>= 1.4)": ratio("flood", "replyMiBPerSec"),
  "KiB per held connection (<= 2)": stage.kibPerHeldConnection,
};
const met = {
  "msgs/s at 100 connections vs Bun minimal (>= 1.0)":
    targets["msgs/s at 100 connections vs Bun minimal (>= 1.0)"] >= 1.0,
  "msgs/s at 1000 connections vs Bun minimal (>= 1.0)":
    targets["msgs/s at 1000 connections vs Bun minimal (>= 1.0)"] >= 1.0,
  "flood bandwidth vs Bun minimal (>= 1.4)": targets["flood bandwidth vs Bun minimal (>= 1.4)"] >= 1.4,
  "KiB per held connection (<= 2)": targets["KiB per held connection (<= 2)"] <= 2,
};
const date = new Date().toISOString();
const loadAfter = loadavg()[0]!;
const report = {
  date,
  stage: LAST_STAGE,
  machine: {
    cores: cpus().length,
    pinned: pinning,
    bun: Bun.version,
    node: which("node") ? (await new Response(spawn(["node", "--version"]).stdout).text()).trim() : null,
    loadBefore,
    loadAfter,
  },
  config: { seconds: SECONDS, warmup: WARMUP, rounds: ROUNDS, held: HELD, scenarios: SCENARIOS },
  servers: SERVERS.map((server) => ({
    name: server.name,
    command: server.command.map((part) => (part === process.execPath ? "bun" : part)).join(" "),
  })),
  results,
  ratios: targets,
  met,
  minutes: round((Date.now() - started) / 60_000, 1),
};
mkdirSync(OUT_DIR, { recursive: true });
writeFileSync(join(OUT_DIR, "echo.json"), `${JSON.stringify(report, null, 2)}\n`);
writeFileSync(
  join(OUT_DIR, "echo.svg"),
  chart(results, { date, pinned: pinning, load: (loadBefore + loadAfter) / 2, rounds: ROUNDS }),
);

console.log(
  "\nmedian            " +
    SCENARIOS.map(({ name }) => name.padStart(18)).join("") +
    "   flood MiB/s   p99 @1000   KiB/held   peak RSS",
);
for (const server of SERVERS) {
  const s = results[server.name]!;
  console.log(
    server.name.padEnd(18) +
      SCENARIOS.map(({ name }) => `${s.scenarios[name]!.msgsPerSec} msgs/s`.padStart(18)).join("") +
      `${s.scenarios.flood!.replyMiBPerSec}`.padStart(14) +
      `${s.scenarios["1000 connections"]!.p99Us} us`.padStart(12) +
      `${s.kibPerHeldConnection}`.padStart(11) +
      `${s.peakRssMiB} MiB`.padStart(11),
  );
}
console.log("\ntargets for " + STAGE_NAME);
for (const [name, value] of Object.entries(targets))
  console.log(`  ${met[name as keyof typeof met] ? "met    " : "NOT MET"} ${name}: ${value}`);
console.log(`\nwrote ${join(values["out-dir"], "echo.json")} and echo.svg in ${report.minutes} min`);
