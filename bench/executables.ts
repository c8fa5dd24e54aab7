#!/usr/bin/env bun
// What shipping costs: for each command of build/commands.ts, side by side in one run, `bun FILE.ts` (the stage as
// it is), the executable `bun run build` makes, and the npm package's bundled command (`bun dist/npm/NAME`): size
// on disk; for the servers, time from spawn to the `listening on` line and resident memory once idle (summed over
// the process tree: the echo server's supervisor and its one worker); for the clients, time from spawn to exit of
// one short run and its peak memory. Rounds interleave the three ways, so noise falls on all alike; medians.
// Not a test: `bun run bench executables` (a minute or two). Writes bench/results/executables.json.
//
//   bun bench/executables.ts [--rounds 15] [--out bench/results/executables.json]

import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { build } from "../build/build.ts";
import { COMMANDS, type CommandName, sourceOf } from "../build/commands.ts";
import { startEchoUpstream } from "../test/support/net.ts";
import {
  commandLine,
  descendants,
  median,
  memoryKiB,
  numberOption,
  quantile,
  ROOT,
  spawn,
  startListening,
  stop,
} from "./lib.ts";

const HELP = `Usage: bun bench/executables.ts [options]        (or: bun run bench executables)

What shipping costs, side by side in one run: each command of build/commands.ts as \`bun FILE.ts\`, as the
executable \`bun run build\` makes and as the npm package's bundled command. Size on disk; for the servers, time to
the listening line and idle memory; for the clients, time to exit of a short run and peak memory. Rounds
interleave the three ways; medians.
Run time: a minute or two (it builds the four commands twice first).
Writes --out, which by default REPLACES the committed results (bench/results/executables.json); to keep them, give
another file, e.g. --out /tmp/executables.json.

Options:
  --rounds N    rounds of every command every way (default 15)
  --out FILE    where the JSON results go (default bench/results/executables.json)
  -h, --help    show this help
`;

const values = commandLine(HELP, {
  rounds: { type: "string", default: "15" },
  out: { type: "string", default: "bench/results/executables.json" },
});
const ROUNDS = numberOption("--rounds", values.rounds, { min: 1, integer: true });

type Way = "source" | "executable" | "bundle";
const WAYS: Way[] = ["source", "executable", "bundle"];

const work = mkdtempSync(join(tmpdir(), "bun-tcp-lab-bench-exe-"));
process.on("exit", () => rmSync(work, { recursive: true, force: true }));
const names = COMMANDS.map((c) => c.name);
await build(names, join(work, "exe"), true);
await build(names, join(work, "npm"), false);

function commandFor(name: CommandName, way: Way): string[] {
  if (way === "source") return [process.execPath, sourceOf(name)];
  if (way === "executable") return [join(work, "exe", name)];
  return [process.execPath, join(work, "npm", name)];
}

function sizeOf(name: CommandName, way: Way): number {
  if (way === "source") return statSync(sourceOf(name)).size;
  return statSync(join(work, way === "executable" ? "exe" : "npm", name)).size;
}

/** Arguments for one measured run; the servers on a free port with one worker, the clients against `port`. */
function argsFor(name: CommandName, upstreamPort: number): string[] {
  switch (name) {
    case "tcp-echo-server":
      return ["--port", "0", "--workers", "1", "--log-level", "error"];
    case "tcp-proxy":
      return ["--port", "0", "--upstream", `127.0.0.1:${upstreamPort}`, "--log-level", "error"];
    case "tcp-load":
      return ["--port", String(upstreamPort), "-c", "1", "-m", "100"];
    case "tcp-sockets":
      return ["--port", String(upstreamPort)];
  }
}

interface Sample {
  ms: number;
  /** CPU time (user + system) it took, which a busy machine disturbs far less than wall time. */
  cpuMs: number;
  /** KiB: resident once idle (servers), or peak (clients). */
  memoryKiB: number;
}

const SERVERS = new Set<CommandName>(["tcp-echo-server", "tcp-proxy"]);
/** GNU time (Debian package time), for the clients' peak memory; without it, that column stays empty. */
const GNU_TIME = existsSync("/usr/bin/time") ? "/usr/bin/time" : undefined;
const TICKS_PER_SECOND = Number(Bun.spawnSync(["getconf", "CLK_TCK"]).stdout.toString().trim()) || 100;

/** CPU milliseconds `pids` have used so far (utime + stime from /proc/PID/stat). */
function cpuMsOf(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    ticks += Number(fields[11]) + Number(fields[12]); // fields 14 and 15 of the whole line
  }
  return (ticks * 1000) / TICKS_PER_SECOND;
}

async function measure(name: CommandName, way: Way, upstreamPort: number): Promise<Sample> {
  const command = [...commandFor(name, way), ...argsFor(name, upstreamPort)];
  const started = performance.now();
  if (SERVERS.has(name)) {
    const { child } = await startListening(command, `${name} (${way})`);
    const ms = performance.now() - started;
    const cpuMs = cpuMsOf([child.pid, ...descendants(child.pid)]);
    await Bun.sleep(1000); // idle: what it holds once started, after start-up garbage is collected
    const { rss } = memoryKiB([child.pid, ...descendants(child.pid)]);
    await stop(child);
    return { ms, cpuMs, memoryKiB: rss };
  }
  // GNU time reports the child's own peak (Bun's resourceUsage() gives the largest of all children so far).
  const peakFile = join(work, "peak");
  const child = spawn(GNU_TIME ? [GNU_TIME, "-f", "%M %U %S", "-o", peakFile, ...command] : command);
  const [code] = await Promise.all([
    child.exited,
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
  ]);
  const ms = performance.now() - started;
  if (code !== 0) throw new Error(`${command.join(" ")} exited ${code}`);
  if (!GNU_TIME) return { ms, cpuMs: Number.NaN, memoryKiB: Number.NaN };
  const [peak, user, system] = readFileSync(peakFile, "utf8").trim().split(" ").map(Number);
  return { ms, cpuMs: (user! + system!) * 1000, memoryKiB: peak! };
}

await using upstream = startEchoUpstream();
const samples = new Map<string, Sample[]>();
const loadBefore = loadavg();
for (let round = 0; round < ROUNDS; round++) {
  for (const name of names) {
    // Rotate the order of the three ways each round.
    for (let i = 0; i < WAYS.length; i++) {
      const way = WAYS[(i + round) % WAYS.length]!;
      const key = `${name} ${way}`;
      samples.set(key, [...(samples.get(key) ?? []), await measure(name, way, upstream.port)]);
    }
  }
  process.stderr.write(`round ${round + 1}/${ROUNDS}\n`);
}
const loadAfter = loadavg();

const results = names.map((name) => ({
  command: name,
  source: relative(ROOT, sourceOf(name)),
  server: SERVERS.has(name),
  ...Object.fromEntries(
    WAYS.map((way) => {
      const runs = samples.get(`${name} ${way}`)!;
      return [
        way,
        {
          bytes: sizeOf(name, way),
          medianMs: Math.round(median(runs.map((s) => s.ms))),
          /** The middle half of the runs: how much the machine's noise moves the median. */
          quartilesMs: [0.25, 0.75].map((q) =>
            Math.round(
              quantile(
                runs.map((s) => s.ms),
                q,
              ),
            ),
          ),
          medianCpuMs: Math.round(median(runs.map((s) => s.cpuMs))),
          medianMemoryKiB: Math.round(median(runs.map((s) => s.memoryKiB))),
        },
      ];
    }),
  ),
}));

const report = {
  date: new Date().toISOString(),
  bun: Bun.version,
  rounds: ROUNDS,
  loadAverage: { before: loadBefore.map((x) => +x.toFixed(2)), after: loadAfter.map((x) => +x.toFixed(2)) },
  measured: {
    servers:
      "ms from spawn to the listening line, and CPU ms the process tree used by then; " +
      "resident KiB of the process tree 1 s later (echo: supervisor + 1 worker)",
    clients:
      "ms from spawn to exit (tcp-load: 100 messages on 1 connection; tcp-sockets: one count); peak KiB (GNU time)",
  },
  results,
};
writeFileSync(resolve(ROOT, values.out), `${JSON.stringify(report, null, 2)}\n`);

const mib = (kib: number): string => `${(kib / 1024).toFixed(0)} MiB`;
const size = (b: number): string => (b > 2 ** 20 ? `${(b / 2 ** 20).toFixed(1)} MiB` : `${(b / 1024).toFixed(0)} KiB`);
console.log(
  `load average ${loadBefore.map((x) => x.toFixed(2)).join(" ")} -> ${loadAfter.map((x) => x.toFixed(2)).join(" ")}`,
);
console.log("| command | measured | size: source / executable / bundle | wall ms | CPU ms | memory |");
for (const r of results) {
  const row = (key: "bytes" | "medianMs" | "medianCpuMs" | "medianMemoryKiB", format: (n: number) => string): string =>
    WAYS.map((way) => format((r as unknown as Record<Way, Record<string, number>>)[way][key]!)).join(" / ");
  console.log(
    `| ${r.command} | ${r.server ? "to listening, idle RSS" : "to exit, peak RSS"} | ${row("bytes", size)} | ` +
      `${row("medianMs", String)} | ${row("medianCpuMs", String)} | ${row("medianMemoryKiB", mib)} |`,
  );
}
