// What the benchmarks need beyond the shared tooling in lib/: pinning a command to a core, and medians.
// Finding the latest stage, spawning a server and waiting for its listening line, stopping a process tree and
// reading memory from /proc live in lib/; they are re-exported here under the names the benchmarks use.

import type { Subprocess } from "bun";
import { cpus } from "node:os";
import * as processes from "../lib/processes.ts";
import { environment, killTree, OutputCollector, track, WITHOUT_COLOUR } from "../lib/processes.ts";
import { join } from "node:path";
import { ROOT, stageFiles } from "../lib/stages.ts";

export { descendants, memoryKiB } from "../lib/processes.ts";
export { commandLine, numberOption, usageError } from "../lib/cli.ts";
export { API_LINE, lastStage, ROOT } from "../lib/stages.ts";

/** taskset and two cores: the server (or proxy) can have CPU 0 and the load CPU 1, each paying for its own core. */
export const canPin = Bun.which("taskset") !== null && cpus().length >= 2;

/** `command` run on CPU `cpu` when `pin` (by default: whenever pinning is possible). */
export function onCpu(cpu: 0 | 1, command: string[], pin = canPin): string[] {
  return pin ? ["taskset", "-c", String(cpu), ...command] : command;
}

/** The stage file in `folder` whose name ends with `suffix` (e.g. "-fault-injection.ts"), whatever its number. */
export function stageEndingWith(folder: string, suffix: string): string | undefined {
  return stageFiles(folder)
    .filter((name) => name.endsWith(suffix))
    .map((name) => join(folder, name))[0];
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

/** Spawns a server stage (or reference server) and waits for its `listening on HOST:PORT` line (or `line`). */
export async function startListening(
  command: string[],
  what: string,
  line?: RegExp,
): Promise<{ child: Child; port: number }> {
  const server = await processes.startListening(command, { name: what, line });
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
