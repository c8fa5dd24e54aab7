// What every benchmark here needs, in one place: which stage is the latest, pinning a command to a core, child
// processes that never outlive the benchmark, waiting for a server's listening line, and a median.
// Memory and process-tree readings come from the test helpers (test/support/process.ts), which own them.

import type { Subprocess } from "bun";
import { readdirSync } from "node:fs";
import { cpus } from "node:os";
import { join, resolve } from "node:path";
import { descendants, LISTENING_LINE } from "../test/support/process.ts";

export { API_LINE } from "../test/support/process.ts";

export { descendants, memoryKiB } from "../test/support/process.ts";

export const ROOT = resolve(import.meta.dir, "..");

/** taskset and two cores: the server (or proxy) can have CPU 0 and the load CPU 1, each paying for its own core. */
export const canPin = Bun.which("taskset") !== null && cpus().length >= 2;

/** `command` run on CPU `cpu` when `pin` (by default: whenever pinning is possible). */
export function onCpu(cpu: 0 | 1, command: string[], pin = canPin): string[] {
  return pin ? ["taskset", "-c", String(cpu), ...command] : command;
}

/** The highest-numbered stage file in `folder` (relative to the root), numbered `from` or above. */
export function lastStage(folder: string, from = 1): string {
  const stages = readdirSync(join(ROOT, folder))
    .filter((name) => /^\d{3}-.*\.ts$/.test(name) && !name.includes(".test.") && Number(name.slice(0, 3)) >= from)
    .sort();
  const last = stages.at(-1);
  if (last === undefined) throw new Error(`no stage numbered ${from} or above in ${folder}/`);
  return join(folder, last);
}

/** The stage file in `folder` whose name ends with `suffix` (e.g. "-fault-injection.ts"), whatever its number. */
export function stageEndingWith(folder: string, suffix: string): string | undefined {
  const name = readdirSync(join(ROOT, folder)).find((file) => /^\d{3}-/.test(file) && file.endsWith(suffix));
  return name === undefined ? undefined : join(folder, name);
}

export type Child = Subprocess<"ignore" | "pipe", "pipe", "pipe">;

// Every child still running when the benchmark exits, for whatever reason, is killed with it.
const children = new Set<Subprocess>();
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

/** Spawns `command` from the root, colours off, stdout and stderr piped. */
export function spawn(command: string[], stdin: "ignore" | "pipe" = "ignore"): Child {
  const child = Bun.spawn(command, {
    cwd: ROOT,
    stdin,
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, NO_COLOR: "1" },
  });
  children.add(child);
  void child.exited.then(() => children.delete(child));
  return child;
}

/** Kills `child` and its descendants (a supervisor's workers), and waits for it. */
export async function stop(child: Subprocess): Promise<void> {
  for (const pid of descendants(child.pid)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone meanwhile
    }
  }
  child.kill("SIGKILL");
  await child.exited;
}

/** Reads `child`'s stdout until `pattern` matches; keeps draining stdout afterwards, so the child never blocks. */
export async function waitForLine(
  child: Child,
  pattern: RegExp,
  what: string,
  timeoutMs = 60_000,
): Promise<RegExpMatchArray> {
  const reader = child.stdout.getReader();
  let text = "";
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const match = text.match(pattern);
    if (match) {
      reader.releaseLock();
      void child.stdout.pipeTo(new WritableStream());
      return match;
    }
    if (Date.now() > deadline) throw new Error(`${what}: no ${pattern} in ${timeoutMs} ms: ${text}`);
    const { value, done } = await reader.read();
    if (done) throw new Error(`${what} ended: ${text}${await new Response(child.stderr).text()}`);
    text += new TextDecoder().decode(value);
  }
}

/** Spawns a server stage (or reference server) and waits for its `listening on HOST:PORT` line (or `line`). */
export async function startListening(
  command: string[],
  what: string,
  line: RegExp = LISTENING_LINE,
): Promise<{ child: Child; port: number }> {
  const child = spawn(command);
  try {
    const [, , port] = await waitForLine(child, line, what, 10_000);
    void child.stderr.pipeTo(new WritableStream());
    return { child, port: Number(port) };
  } catch (error) {
    await stop(child);
    throw error;
  }
}

/** The q-quantile (0..1) of `xs`, interpolating between neighbours. */
export function quantile(xs: number[], q: number): number {
  const sorted = [...xs].sort((a, b) => a - b);
  const at = (sorted.length - 1) * q;
  const low = Math.floor(at);
  return sorted[low]! + (sorted[Math.min(low + 1, sorted.length - 1)]! - sorted[low]!) * (at - low);
}

export const median = (xs: number[]): number => quantile(xs, 0.5);
