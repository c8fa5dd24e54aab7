// Child processes for the tooling (tests, benchmarks, the menu): spawning one with its output captured, waiting for
// a server stage's listening line, stopping it (a signal, a grace period, then SIGKILL; or its whole tree at once),
// and reading processes by PID from /proc (Linux). Every child spawned here is SIGKILLed if this process exits
// first, whatever way it exits, so none outlives the tool that started it.

import type { Subprocess } from "bun";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { type Clock, systemClock } from "./clock.ts";
import { type Address, LISTENING_LINE, ROOT } from "./stages.ts";

// ---------------------------------------------------------------------------------------------------------------
// Environment and bookkeeping.

/** Environment changes that turn colour off: NO_COLOR set, FORCE_COLOR removed (any value, even "0", forces it). */
export const WITHOUT_COLOUR: Readonly<Record<string, string | undefined>> = { NO_COLOR: "1", FORCE_COLOR: undefined };

/** This process's environment with `changes` applied in order; a variable set to `undefined` is removed. */
export function environment(...changes: Record<string, string | undefined>[]): Record<string, string> {
  const env: Record<string, string | undefined> = Object.assign({}, process.env, ...changes);
  return Object.fromEntries(Object.entries(env).filter((entry): entry is [string, string] => entry[1] !== undefined));
}

// Every child started through here and not reaped yet.
const live = new Set<Subprocess>();
process.on("exit", () => {
  for (const child of live) child.kill("SIGKILL");
});

/** Registers `child` to be killed if this process exits before it; it is forgotten once it has exited. */
export function track<T extends Subprocess>(child: T): T {
  live.add(child);
  void child.exited.then(() => live.delete(child));
  return child;
}

/** The tracked children that have not exited yet. */
export function trackedChildren(): Subprocess[] {
  return [...live];
}

// ---------------------------------------------------------------------------------------------------------------
// Output.

/** Why a wait on output ended without its match. */
export class OutputWaitError extends Error {
  constructor(
    message: string,
    readonly reason: "ended" | "timeout" | "aborted",
  ) {
    super(message);
  }
}

/**
 * Reads a child's output stream to its end, as text, from the moment it is made (so the child never blocks on a
 * full pipe), and lets anyone wait for a pattern in it. `onLine` gets each complete line as it comes, then the
 * unterminated rest at the end.
 */
export class OutputCollector {
  text = "";
  private readonly waiters = new Set<() => void>();
  private finished = false;
  private readonly done: Promise<void>;

  constructor(
    stream: ReadableStream<Uint8Array>,
    private readonly onLine?: (line: string) => void,
  ) {
    this.done = this.pump(stream);
  }

  private async pump(stream: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    let partial = "";
    try {
      for await (const chunk of stream) {
        const text = decoder.decode(chunk, { stream: true });
        this.text += text;
        if (this.onLine) {
          const lines = (partial + text).split("\n");
          partial = lines.pop()!;
          for (const line of lines) this.onLine(line);
        }
        this.notify();
      }
    } catch {
      // The stream errors when the process is killed mid-write; what was read stays available.
    }
    if (partial !== "") this.onLine?.(partial);
    this.finished = true;
    this.notify();
  }

  private notify(): void {
    for (const wake of this.waiters) wake();
  }

  /**
   * Resolves with the first match of `pattern` in the text from character `from`. Rejects with an OutputWaitError
   * when the stream ends without it, after `timeoutMs`, or when `signal` is aborted.
   */
  waitFor(
    pattern: RegExp,
    timeoutMs: number,
    from = 0,
    describe = "output",
    signal?: AbortSignal,
  ): Promise<RegExpMatchArray> {
    return new Promise((resolvePromise, reject) => {
      const fail = (message: string, reason: OutputWaitError["reason"]): void => {
        finish();
        reject(new OutputWaitError(message, reason));
      };
      const check = (): void => {
        const match = this.text.slice(from).match(pattern);
        if (match) {
          finish();
          resolvePromise(match);
        } else if (this.finished) {
          fail(`${describe} ended without ${pattern}; it was:\n${this.text}`, "ended");
        }
      };
      const onAbort = (): void => fail("interrupted", "aborted");
      const timer = setTimeout(
        () => fail(`no ${pattern} in ${describe} after ${timeoutMs} ms; it was:\n${this.text}`, "timeout"),
        timeoutMs,
      );
      const finish = (): void => {
        clearTimeout(timer);
        this.waiters.delete(check);
        signal?.removeEventListener("abort", onAbort);
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiters.add(check);
      check();
    });
  }

  /** Resolves with the whole text once the stream has ended (the process closed it or exited). */
  async ended(): Promise<string> {
    await this.done;
    return this.text;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Stopping.

/** What the stop functions need of a child: a Subprocess, or a stand-in in a test. */
export interface ChildLike {
  readonly pid: number;
  readonly exitCode: number | null;
  readonly signalCode: NodeJS.Signals | number | null;
  readonly exited: Promise<number>;
  kill(signal?: NodeJS.Signals | number): void;
}

export interface Outcome {
  /** Exit code, or null when a signal ended it. */
  code: number | null;
  signal: string | null;
  /** It was still running after the grace period and got SIGKILL. */
  killed: boolean;
}

export function hasExited(child: ChildLike): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

export function outcomeOf(child: ChildLike, killed: boolean): Outcome {
  return { code: child.exitCode, signal: child.signalCode === null ? null : String(child.signalCode), killed };
}

/** Waits up to `graceMs` for `child` to exit by itself, then SIGKILLs it; resolves once it is gone. */
export async function awaitWithGrace(child: ChildLike, graceMs: number, clock: Clock = systemClock): Promise<Outcome> {
  let killed = false;
  const timer = clock.setTimeout(() => {
    killed = true;
    child.kill("SIGKILL");
  }, graceMs);
  try {
    await child.exited;
  } finally {
    clock.clearTimeout(timer);
  }
  return outcomeOf(child, killed);
}

/** Sends `signal` (the graceful request), then SIGKILL after `graceMs`. Safe on a child that has exited. */
export async function stopProcess(
  child: ChildLike,
  signal: NodeJS.Signals,
  graceMs: number,
  clock: Clock = systemClock,
): Promise<Outcome> {
  if (!hasExited(child)) child.kill(signal);
  return awaitWithGrace(child, graceMs, clock);
}

/** SIGKILLs `child` and every descendant it has (a supervisor's workers), and waits for `child` to exit. */
export async function killTree(child: ChildLike): Promise<void> {
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

// ---------------------------------------------------------------------------------------------------------------
// A child with its output captured.

export interface SpawnOptions {
  /** Working directory (default: the project root). */
  cwd?: string;
  /** The whole environment (see `environment`); default: this process's, colour off. */
  env?: Record<string, string>;
  stdin?: "pipe" | "ignore";
  /** Called with each line of stdout and of stderr as it arrives (the menu's demo prints them, prefixed). */
  onLine?: (line: string, stream: "stdout" | "stderr") => void;
}

/** A spawned process, its stdout and stderr collected as text. `await using` SIGKILLs it if still running. */
export class Running implements AsyncDisposable {
  readonly stdout: OutputCollector;
  readonly stderr: OutputCollector;
  /** Set from the listening line by `waitForListening`. */
  host = "";
  port = 0;

  constructor(
    readonly proc: Subprocess<"pipe" | "ignore", "pipe", "pipe">,
    readonly command: string[],
    onLine?: SpawnOptions["onLine"],
  ) {
    this.stdout = new OutputCollector(proc.stdout, onLine && ((line) => onLine(line, "stdout")));
    this.stderr = new OutputCollector(proc.stderr, onLine && ((line) => onLine(line, "stderr")));
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

  /** Resolves once both streams have ended, so every line has been read. */
  async drained(): Promise<void> {
    await Promise.all([this.stdout.ended(), this.stderr.ended()]);
  }

  /** Waits for `pattern` in stderr (where logs go), searching from character `from`. */
  waitForLog(pattern: RegExp, timeoutMs = 5000, from = 0): Promise<RegExpMatchArray> {
    return this.stderr.waitFor(pattern, timeoutMs, from, `stderr of ${this.command.join(" ")}`);
  }

  /**
   * Waits for the `listening on HOST:PORT` line, sets `host` and `port`, and returns them. Rejects, saying so, if
   * the process exits first, after `timeoutMs`, or when `signal` is aborted ("interrupted").
   */
  async waitForListening(
    options: { timeoutMs?: number; signal?: AbortSignal; name?: string; line?: RegExp } = {},
  ): Promise<Address> {
    const { timeoutMs = 10_000, signal, name = this.command.join(" "), line = LISTENING_LINE } = options;
    try {
      const match = await this.stdout.waitFor(line, timeoutMs, 0, `stdout of ${name}`, signal);
      this.host = match[1]!;
      this.port = Number(match[2]);
      return { host: this.host, port: this.port };
    } catch (error) {
      if (!(error instanceof OutputWaitError)) throw error;
      if (error.reason === "aborted") throw new Error("interrupted");
      const expected = line === LISTENING_LINE ? "listening on HOST:PORT" : line.source;
      if (error.reason === "timeout")
        throw new Error(`${name} did not print "${expected}" within ${timeoutMs / 1000} s`);
      throw new Error(`${name} exited (code ${await this.proc.exited}) before listening`);
    }
  }

  /** Sends `signal` and waits for the exit code; SIGKILL after `graceMs` if it has not exited by then. */
  async stop(signal: NodeJS.Signals = "SIGTERM", graceMs = 5000): Promise<number> {
    await stopProcess(this.proc, signal, graceMs);
    return this.proc.exited;
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
    if (!hasExited(this.proc)) {
      this.proc.kill("SIGKILL");
      await this.proc.exited;
    }
  }
}

/** Spawns `command` (argv; "bun" is not resolved here) with stdout and stderr collected; returns at once. */
export function spawnProcess(command: string[], options: SpawnOptions = {}): Running {
  const proc = Bun.spawn(command, {
    cwd: options.cwd ?? ROOT,
    env: options.env ?? environment(WITHOUT_COLOUR),
    stdin: options.stdin ?? "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  return new Running(track(proc), command, options.onLine);
}

/**
 * Spawns a server (a stage, a reference server) and waits for its listening line. If it never comes, the process
 * is killed and the error says why, with what the process printed.
 */
export async function startListening(
  command: string[],
  options: SpawnOptions & { timeoutMs?: number; name?: string; line?: RegExp } = {},
): Promise<Running> {
  const server = spawnProcess(command, options);
  try {
    await server.waitForListening(options);
  } catch (error) {
    await server[Symbol.asyncDispose]();
    await server.drained();
    throw new Error(`${(error as Error).message}\nstdout:\n${server.stdout.text}\nstderr:\n${server.stderr.text}`);
  }
  return server;
}

// ---------------------------------------------------------------------------------------------------------------
// Processes by PID, from /proc.

/** True while the process exists (an unreaped zombie counts as gone: it runs no code and holds no socket). */
export function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/** Every living descendant of `pid` (children, grandchildren, ...), from /proc. */
export function descendants(pid: number): number[] {
  const found: number[] = [];
  const visit = (parent: number): void => {
    let tasks: string[];
    try {
      tasks = readdirSync(`/proc/${parent}/task`);
    } catch {
      return; // gone meanwhile
    }
    for (const task of tasks) {
      let children = "";
      try {
        children = readFileSync(`/proc/${parent}/task/${task}/children`, "utf8");
      } catch {
        continue;
      }
      for (const child of children.split(" ").filter(Boolean).map(Number)) {
        found.push(child);
        visit(child);
      }
    }
  };
  visit(pid);
  return found;
}

/** Resolves once none of `pids` is alive; rejects after `timeoutMs` naming the survivors. */
export async function waitGone(pids: number[], timeoutMs = 5000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const alive = pids.filter(isAlive);
    if (alive.length === 0) return;
    if (performance.now() > deadline)
      throw new Error(`processes still alive after ${timeoutMs} ms: ${alive.join(", ")}`);
    await Bun.sleep(25); // /proc gives no event for a process exit that is not our child's
  }
}

/** When `pid` started (clock ticks since boot, /proc/PID/stat field 22): with the PID it names one process. */
export function startTimeOf(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

/** SIGKILLs `pid` if it is still the process seen earlier (a PID reused meanwhile belongs to someone else). */
export function killIfSame(pid: number, startTime: string): void {
  if (startTimeOf(pid) !== startTime) return;
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // exited meanwhile
  }
}

/** Resident memory in KiB, now (VmRSS) and peak so far (VmHWM), from /proc (Linux), summed over `pids`. */
export function memoryKiB(pids: number | number[]): { rss: number; peak: number } {
  const total = { rss: 0, peak: 0 };
  for (const pid of [pids].flat()) {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN);
    total.rss += field("VmRSS");
    total.peak += field("VmHWM");
  }
  return total;
}

/** Open file descriptors (sockets, pipes, files...) of `pids`, summed, from /proc/PID/fd (Linux). */
export function openFds(pids: number | number[]): number {
  let count = 0;
  for (const pid of [pids].flat()) {
    try {
      count += readdirSync(`/proc/${pid}/fd`).length;
    } catch {
      // exited meanwhile: it holds none
    }
  }
  return count;
}

/** Resets the VmHWM peak of `pids` to their current RSS (Linux: writes 5 to /proc/PID/clear_refs). */
export function resetMemoryPeak(pids: number | number[]): void {
  for (const pid of [pids].flat()) writeFileSync(`/proc/${pid}/clear_refs`, "5");
}
