#!/usr/bin/env bun
// `bun run bench [name ...]`: runs the benchmarks (not tests), each in its own process, one after another.
// Names: echo (bench/echo.ts), client (bench/loadgen-vs-minimal.ts), proxy (bench/proxy.ts), executables
// (bench/executables.ts); without a name, every one whose file exists. Options after the names go to each
// benchmark (e.g. `bun run bench echo --rounds 1`).

import { existsSync } from "node:fs";
import { resolve } from "node:path";

const ROOT = resolve(import.meta.dir, "..");
const BENCHES: Record<string, string> = {
  echo: "bench/echo.ts",
  client: "bench/loadgen-vs-minimal.ts",
  proxy: "bench/proxy.ts",
  executables: "bench/executables.ts",
};

const args = process.argv.slice(2);
const names = args.filter((arg) => !arg.startsWith("-") && arg in BENCHES);
const options = args.filter((arg) => !names.includes(arg));
const unknown = options.find((arg) => !arg.startsWith("-") && !/^[\d.]+$/.test(arg) && !arg.includes("/"));
if (unknown !== undefined || args.includes("-h") || args.includes("--help")) {
  const out = unknown === undefined ? process.stdout : process.stderr;
  out.write(`Usage: bun run bench [${Object.keys(BENCHES).join("|")} ...] [options for the benchmark]\n`);
  if (unknown !== undefined) out.write(`error: unknown benchmark "${unknown}"\n`);
  process.exit(unknown === undefined ? 0 : 2);
}

const chosen = (names.length > 0 ? names : Object.keys(BENCHES)).filter((name) =>
  existsSync(resolve(ROOT, BENCHES[name]!)),
);
let failed = 0;
for (const name of chosen) {
  console.log(`\n=== bench ${name}: bun ${BENCHES[name]} ${options.join(" ")}`);
  const child = Bun.spawn([process.execPath, BENCHES[name]!, ...options], {
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
