#!/usr/bin/env bun
// `bun run bench [name ...]`: runs the benchmarks (not tests), each in its own process, one after another.
// Without a name, every one whose file exists. Options after the names go to each benchmark chosen
// (e.g. `bun run bench echo --rounds 1`). --help lists them, with each one's own --help.

import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { ROOT } from "../lib/stages.ts";
import { usageError } from "./lib.ts";

interface Bench {
  file: string;
  /** What it measures, how long it takes, what it writes: one line of the overview. */
  summary: string;
}

const BENCHES: Record<string, Bench> = {
  echo: {
    file: "bench/echo.ts",
    summary: "echo stages vs reference servers, 5-6 min; REPLACES bench/results/echo.json and echo.svg",
  },
  client: {
    file: "bench/loadgen-vs-minimal.ts",
    summary: "load generator vs a minimal client, about 4 min; prints a table, writes no file",
  },
  proxy: {
    file: "bench/proxy.ts",
    summary: "the last proxy stage vs direct and peers, about 1 min; REPLACES bench/results/proxy.json",
  },
  executables: {
    file: "bench/executables.ts",
    summary: "the built commands vs bun FILE.ts: size, start-up, memory; REPLACES bench/results/executables.json",
  },
};

const available = Object.keys(BENCHES).filter((name) => existsSync(resolve(ROOT, BENCHES[name]!.file)));

const OVERVIEW = `Usage: bun run bench [NAME ...] [options for the benchmarks]        (or: bun bench/run.ts ...)

Runs the benchmarks (they are not tests), each in its own process, one after another; without a NAME, all of
them (about 10 minutes). Options after the names go to every benchmark chosen. The results they write REPLACE
the committed ones in bench/results/; give each one its output option to write elsewhere (see below).

${available.map((name) => `  ${name.padEnd(7)} ${BENCHES[name]!.summary}`).join("\n")}

Example: bun run bench echo --rounds 1 --out-dir /tmp/bench
`;

/** The --help text of one benchmark, as it prints it. */
async function helpOf(name: string): Promise<string> {
  const child = Bun.spawn([process.execPath, BENCHES[name]!.file, "--help"], { cwd: ROOT, stdout: "pipe" });
  const [text] = await Promise.all([new Response(child.stdout).text(), child.exited]);
  return text;
}

const args = process.argv.slice(2);
const names = args.filter((arg) => !arg.startsWith("-") && arg in BENCHES);
const options = args.filter((arg) => !names.includes(arg));
const unknown = options.find((arg) => !arg.startsWith("-") && !/^[\d.,]+$/.test(arg) && !arg.includes("/"));
if (unknown !== undefined) usageError(`unknown benchmark "${unknown}": the benchmarks are ${available.join(", ")}`);

if (args.includes("-h") || args.includes("--help")) {
  const shown = names.length > 0 ? names : available;
  const helps = await Promise.all(shown.map(async (name) => `=== bench ${name}\n${await helpOf(name)}`));
  process.stdout.write(`${names.length > 0 ? "" : `${OVERVIEW}\n`}${helps.join("\n")}`);
  process.exit(0);
}

const chosen = (names.length > 0 ? names : Object.keys(BENCHES)).filter((name) => available.includes(name));
let failed = 0;
for (const name of chosen) {
  console.log(`\n=== bench ${name}: bun ${BENCHES[name]!.file} ${options.join(" ")}`);
  const child = Bun.spawn([process.execPath, BENCHES[name]!.file, ...options], {
    cwd: ROOT,
    stdio: ["inherit", "inherit", "inherit"],
  });
  const code = await child.exited;
  if (code !== 0) {
    console.error(`bench ${name} exited with ${code}`);
    failed++;
  }
}
process.exit(failed > 0 ? 1 : 0);
