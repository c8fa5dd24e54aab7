// What the benchmarks need beyond the shared tooling in lib/: pinning a command to a core, and medians.
// Finding the latest stage, spawning a server and waiting for its listening line, stopping a process tree and
// reading memory from /proc live in lib/; they are re-exported here under the names the benchmarks use.

import type { Subprocess } from "bun";
import { cpus } from "node:os";
import { type ParseArgsOptionsConfig, parseArgs } from "node:util";
import * as processes from "../lib/processes.ts";
import { environment, killTree, OutputCollector, track, WITHOUT_COLOUR } from "../lib/processes.ts";
import { ROOT } from "../lib/stages.ts";

export { descendants, memoryKiB } from "../lib/processes.ts";
export { lastStage, ROOT } from "../lib/stages.ts";

/** taskset and two cores: the server (or proxy) can have CPU 0 and the load CPU 1, each paying for its own core. */
export const canPin = Bun.which("taskset") !== null && cpus().length >= 2;

/** `command` run on CPU `cpu` when `pin` (by default: whenever pinning is possible). */
export function onCpu(cpu: 0 | 1, command: string[], pin = canPin): string[] {
  return pin ? ["taskset", "-c", String(cpu), ...command] : command;
}

export type Child = Subprocess<"ignore" | "pipe", "pipe", "pipe">;

/** Spawns `command` from the root, colours off, stdout and stderr piped; killed if the benchmark exits first. */
export function spawn(command: string[], stdin: "ignore" | "pipe" = "ignore"): Child {
  const env = environment(WITHOUT_COLOUR);
  return track(Bun.spawn(command, { cwd: ROOT, stdin, stdout: "pipe", stderr: "pipe", env }));
}

/** Kills `child` and its descendants (a supervisor's workers), and waits for it. */
export const stop = (child: Subprocess): Promise<void> => killTree(child);

/** Reads `child`'s stdout until `pattern` matches; keeps draining stdout afterwards, so the child never blocks. */
export function waitForLine(
  child: Child,
  pattern: RegExp,
  what: string,
  timeoutMs = 60_000,
): Promise<RegExpMatchArray> {
  return new OutputCollector(child.stdout).waitFor(pattern, timeoutMs, 0, what);
}

/** Spawns a server stage (or reference server) and waits for its `listening on HOST:PORT` line. */
export async function startListening(command: string[], what: string): Promise<{ child: Child; port: number }> {
  const server = await processes.startListening(command, { name: what });
  return { child: server.proc, port: server.port };
}

/** The q-quantile (0..1) of `xs`, interpolating between neighbours. */
export function quantile(xs: number[], q: number): number {
  const sorted = [...xs].sort((a, b) => a - b);
  const at = (sorted.length - 1) * q;
  const low = Math.floor(at);
  return sorted[low]! + (sorted[Math.min(low + 1, sorted.length - 1)]! - sorted[low]!) * (at - low);
}

export const median = (xs: number[]): number => quantile(xs, 0.5);

// ---------------------------------------------------------------------------------------------------------------
// Command lines: --help, and usage errors in one line with exit 2 (never a stack trace).

/** Prints `error: MESSAGE (see --help)` on stderr and exits 2. */
export function usageError(message: string): never {
  process.stderr.write(`error: ${message.split("\n")[0]} (see --help)\n`);
  process.exit(2);
}

const HELP_OPTION = { type: "boolean", short: "h", default: false } as const;

/**
 * Parses this process's command line against `options` (plus -h/--help; no positional arguments): --help prints
 * `help` and exits 0; anything parseArgs rejects is a usage error.
 */
export function commandLine<const O extends ParseArgsOptionsConfig>(help: string, options: O) {
  const config = {
    options: { ...options, help: HELP_OPTION },
    strict: true,
    allowPositionals: false,
  } as const;
  let parsed: ReturnType<typeof parseArgs<typeof config>>;
  try {
    parsed = parseArgs(config);
  } catch (error) {
    usageError((error as Error).message);
  }
  if ((parsed.values as { help?: boolean }).help) {
    process.stdout.write(help);
    process.exit(0);
  }
  return parsed.values;
}

/** `text` as a number of at least `min` (a whole one if `integer`), or a usage error naming `option`. */
export function numberOption(option: string, text: string, { min = 0, integer = false } = {}): number {
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value) || value < min || (integer && !Number.isInteger(value)))
    usageError(`${option} must be ${integer ? "a whole number" : "a number"} of at least ${min}, got "${text}"`);
  return value;
}
