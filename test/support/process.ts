// Spawning stages as real processes for the tests (and anything else that needs to run one and find its port).
//
// Every server stage prints exactly one line `listening on HOST:PORT` on stdout once it accepts connections
// (IPv6 hosts in brackets). `startStage` spawns `bun <file> ...args`, waits for that line and hands back the
// address, the captured output and a `stop()` that signals the process and waits for its exit code.
// `await using` disposes of it (SIGKILL if still alive), so no test leaves a process behind even when it fails.

import type { Subprocess } from "bun";
import { resolve } from "node:path";

export const ROOT = resolve(import.meta.dir, "..", "..");

/** The line every server stage prints when it is listening. */
export const LISTENING_LINE = /^listening on \[?([^\]\s]+?)\]?:(\d+)$/m;

type Stream = "stdout" | "stderr";

/** Collects a child's output as text and lets a test wait for a pattern to appear in it. */
class OutputCollector {
  text = "";
  private waiters = new Set<() => void>();
  private finished = false;

  constructor(stream: ReadableStream<Uint8Array>) {
    void this.pump(stream);
  }

  private async pump(stream: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    try {
      for await (const chunk of stream) {
        this.text += decoder.decode(chunk, { stream: true });
        this.notify();
      }
    } catch {
      // The stream errors when the process is killed mid-write; what was read stays available.
    }
    this.finished = true;
    this.notify();
  }

  private notify(): void {
    for (const wake of this.waiters) wake();
  }

  /** Resolves with the first match of `pattern` (searched from `from`), rejects at EOF or after `timeoutMs`. */
  waitFor(pattern: RegExp, timeoutMs: number, from = 0, describe = "output"): Promise<RegExpMatchArray> {
    return new Promise((resolvePromise, reject) => {
      const check = (): boolean => {
        const match = this.text.slice(from).match(pattern);
        if (match) {
          finish();
          resolvePromise(match);
          return true;
        }
        if (this.finished) {
          finish();
          reject(new Error(`${describe} ended without ${pattern}; it was:\n${this.text}`));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`no ${pattern} in ${describe} after ${timeoutMs} ms; it was:\n${this.text}`));
      }, timeoutMs);
      const finish = (): void => {
        clearTimeout(timer);
        this.waiters.delete(wake);
      };
      const wake = (): void => void check();
      this.waiters.add(wake);
      check();
    });
  }

  /** Resolves once the stream has ended (the process closed it or exited). */
  async ended(): Promise<string> {
    while (!this.finished) {
      await new Promise<void>((wake) => {
        const once = (): void => {
          this.waiters.delete(once);
          wake();
        };
        this.waiters.add(once);
      });
    }
    return this.text;
  }
}

export interface RunOptions {
  env?: Record<string, string>;
  /** Milliseconds to wait for the listening line. */
  readyTimeoutMs?: number;
  stdin?: "pipe" | "ignore";
  /**
   * A command to run bun under, e.g. `["prlimit", "--nofile=64:64"]` for a lower open-files limit (set both soft
   * and hard: Bun raises its soft limit to the hard one at start), or a namespace wrapper.
   */
  prefix?: string[];
}

/** A spawned bun process with its output captured. */
export class Running implements AsyncDisposable {
  readonly stdout: OutputCollector;
  readonly stderr: OutputCollector;
  /** Set by `startStage` from the listening line. */
  host = "";
  port = 0;

  constructor(readonly proc: Subprocess<"pipe" | "ignore", "pipe", "pipe">, readonly command: string[]) {
    this.stdout = new OutputCollector(proc.stdout);
    this.stderr = new OutputCollector(proc.stderr);
  }

  get pid(): number {
    return this.proc.pid;
  }

  /** stdout and stderr together, for assertions on logs and for failure messages. */
  get output(): string {
    return this.stdout.text + this.stderr.text;
  }

  get exited(): Promise<number> {
    return this.proc.exited;
  }

  /** Waits for `pattern` in stderr (where logs go), searching from character `from`. */
  waitForLog(pattern: RegExp, timeoutMs = 5000, from = 0): Promise<RegExpMatchArray> {
    return this.stderr.waitFor(pattern, timeoutMs, from, `stderr of ${this.command.join(" ")}`);
  }

  /** Sends `signal` and waits for the exit code; SIGKILL after `graceMs` if it has not exited by then. */
  async stop(signal: NodeJS.Signals = "SIGTERM", graceMs = 5000): Promise<number> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return this.proc.exited;
    this.proc.kill(signal);
    const timer = setTimeout(() => this.proc.kill("SIGKILL"), graceMs);
    try {
      return await this.proc.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Waits for the process to exit on its own; kills it and throws if it takes longer than `timeoutMs`. */
  async waitExit(timeoutMs = 5000): Promise<number> {
    let timer: Timer | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        this.proc.kill("SIGKILL");
        reject(new Error(`${this.command.join(" ")} did not exit within ${timeoutMs} ms; output:\n${this.output}`));
      }, timeoutMs);
    });
    try {
      return await Promise.race([this.proc.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill("SIGKILL");
      await this.proc.exited;
    }
    live.delete(this.proc);
  }
}

// Safety net: if the test process itself dies early, take every child down with it.
const live = new Set<Subprocess>();
process.on("exit", () => {
  for (const proc of live) proc.kill("SIGKILL");
});

/** Spawns `bun <file> ...args` (file relative to the repo root) and returns as soon as it has started. */
export function run(file: string, args: string[] = [], options: RunOptions = {}): Running {
  const command = [...(options.prefix ?? []), process.execPath, resolve(ROOT, file), ...args];
  const proc = Bun.spawn(command, {
    cwd: ROOT,
    env: { ...process.env, NO_COLOR: "1", FORCE_COLOR: "", ...options.env },
    stdin: options.stdin ?? "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  live.add(proc);
  return new Running(proc, command);
}

/** Spawns a server stage and waits for its `listening on HOST:PORT` line; `host` and `port` are then set. */
export async function startStage(file: string, args: string[] = [], options: RunOptions = {}): Promise<Running> {
  const server = run(file, args, options);
  try {
    const match = await server.stdout.waitFor(LISTENING_LINE, options.readyTimeoutMs ?? 10_000, 0, `stdout of ${file}`);
    server.host = match[1]!;
    server.port = Number(match[2]);
  } catch (error) {
    await server[Symbol.asyncDispose]();
    throw new Error(`${(error as Error).message}\nstderr:\n${server.stderr.text}`);
  }
  return server;
}

/** Runs a command to completion and returns its exit code and output (for CLI usage tests). */
export async function runToExit(
  file: string,
  args: string[] = [],
  options: RunOptions & { timeoutMs?: number } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  await using child = run(file, args, options);
  const code = await child.waitExit(options.timeoutMs ?? 10_000);
  const [stdout, stderr] = await Promise.all([child.stdout.ended(), child.stderr.ended()]);
  return { code, stdout, stderr };
}
