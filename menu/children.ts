// The processes the menu starts, and how they are stopped, so that none is left behind on any path.
//
// A stage run from the menu is in the menu's process group, the terminal's foreground group. Ctrl-C makes the
// terminal send SIGINT to that whole group: the child gets it exactly as if it had been started from a shell, and
// the menu gets it too (twice under `bun run menu`, which forwards its own copy). So the menu keeps ONE SIGINT
// handler for its whole life: it never dies of SIGINT, it tells whatever is running that the user interrupted it,
// and that waits for the children to finish their graceful shutdown, killing them after a grace period.
// At a prompt the terminal is in raw mode: Ctrl-C is then a key that the prompt reads, not a signal.

import type { Subprocess } from "bun";
import { type Command, commandLine } from "./catalogue.ts";

/** How long a stopped child may take to shut down gracefully before it is killed. */
export const GRACE_MS = 3000;

/** The line every server stage prints on stdout when it accepts connections. */
export const LISTENING_LINE = /^listening on \[?([^\]\s]+?)\]?:(\d+)$/m;

// Every child the menu started and that has not been reaped yet; whatever way the menu exits, they die with it.
const live = new Set<Subprocess>();
process.on("exit", () => {
  for (const child of live) child.kill("SIGKILL");
});

export function liveChildren(): number[] {
  return [...live].map((child) => child.pid);
}

// ---------------------------------------------------------------------------------------------------------------
// Signals.

let onInterrupt: (() => void) | undefined;

/** Why the menu is ending: a signal, or its terminal went away (the pty was closed, stdin ended or failed). */
export type Ending = "SIGTERM" | "SIGHUP" | "terminal gone";

/** 128 + the signal number, as a shell reports it; a terminal that went away is a hangup. */
const EXIT_CODES: Record<Ending, number> = { SIGTERM: 143, SIGHUP: 129, "terminal gone": 129 };

let ending: Ending | undefined;
let beforeExit: () => void = () => {};
let shutdownGraceMs = GRACE_MS;

/**
 * Installs the menu's signal handlers, once. SIGINT interrupts what is running (nothing at a prompt); SIGTERM and
 * SIGHUP shut the menu down (see shutDown). `restoreTerminal` runs just before the exit; it may fail, the exit
 * happens anyway.
 */
export function installSignalHandlers(restoreTerminal: () => void, graceMs = GRACE_MS): void {
  beforeExit = restoreTerminal;
  shutdownGraceMs = graceMs;
  process.on("SIGINT", () => onInterrupt?.());
  for (const signal of ["SIGTERM", "SIGHUP"] as const) process.on(signal, () => shutDown(signal));
}

/**
 * Stops every child (SIGTERM, then SIGKILL after the grace period) and exits with the code of the first `why`;
 * asking again while it stops changes nothing (signals come in pairs under `bun run menu`, as SIGINT does).
 * Nothing here may keep the menu alive: the exit is certain a second after the grace period, even if a child
 * or the terminal hangs.
 */
export function shutDown(why: Ending): void {
  if (ending !== undefined) return;
  ending = why;
  onInterrupt?.();
  setTimeout(() => exitNow(true), shutdownGraceMs + 1000);
  void Promise.allSettled([...live].map((child) => stopChild(child, "SIGTERM", shutdownGraceMs))).then(() =>
    exitNow(false),
  );
}

/** True once shutDown has started: what is running then is being stopped, not interrupted by the user. */
export function shuttingDown(): boolean {
  return ending !== undefined;
}

function exitNow(killChildren: boolean): void {
  if (killChildren) for (const child of live) child.kill("SIGKILL");
  try {
    beforeExit();
  } catch {
    // A terminal that is gone fails every call (EIO): there is nothing left to restore.
  }
  process.exit(EXIT_CODES[ending ?? "SIGTERM"]);
}

/** Runs `body` with a signal that is aborted when the user presses Ctrl-C (the menu receives SIGINT). */
export async function interruptible<T>(body: (interrupted: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const previous = onInterrupt;
  onInterrupt = () => controller.abort();
  try {
    return await body(controller.signal);
  } finally {
    onInterrupt = previous;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Spawning and stopping.

export interface SpawnOptions {
  root: string;
  /** "inherit": the child writes to the terminal itself; "pipe": the menu reads its output. */
  output: "inherit" | "pipe";
  /** Changes to the menu's environment; `undefined` removes a variable. */
  env?: Record<string, string | undefined>;
}

/** The menu's environment with `changes` applied; a variable set to `undefined` is removed. */
export function childEnvironment(...changes: Record<string, string | undefined>[]): Record<string, string> {
  const env: Record<string, string | undefined> = Object.assign({}, process.env, ...changes);
  return Object.fromEntries(Object.entries(env).filter((entry): entry is [string, string] => entry[1] !== undefined));
}

/** Starts `command` from the project root; "bun" means this very bun binary. */
export function spawnCommand(
  command: Command,
  options: SpawnOptions,
): Subprocess<"ignore", "pipe" | "inherit", "pipe" | "inherit"> {
  const [program, ...args] = command.argv;
  const executable = program === "bun" ? process.execPath : program!;
  // Paths in a command are relative to the project root, which is the child's working directory.
  const child = Bun.spawn([executable, ...args], {
    cwd: options.root,
    env: childEnvironment(options.env ?? {}, command.env),
    stdin: "ignore",
    stdout: options.output,
    stderr: options.output,
  });
  live.add(child);
  void child.exited.then(() => live.delete(child));
  return child;
}

function hasExited(child: Subprocess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

export interface Outcome {
  /** Exit code, or null when a signal ended it. */
  code: number | null;
  signal: string | null;
  /** It was still running after the grace period and got SIGKILL. */
  killed: boolean;
}

/** Waits up to `graceMs` for `child` to exit by itself, then kills it; resolves once it is gone. */
export async function awaitWithGrace(child: Subprocess, graceMs: number): Promise<Outcome> {
  let killed = false;
  const timer = setTimeout(() => {
    killed = true;
    child.kill("SIGKILL");
  }, graceMs);
  try {
    await child.exited;
  } finally {
    clearTimeout(timer);
  }
  return outcomeOf(child, killed);
}

function outcomeOf(child: Subprocess, killed: boolean): Outcome {
  return { code: child.exitCode, signal: child.signalCode === null ? null : String(child.signalCode), killed };
}

/** Sends `signal` (the graceful request), then kills after `graceMs`. Safe on a child that has already exited. */
export async function stopChild(child: Subprocess, signal: NodeJS.Signals, graceMs: number): Promise<Outcome> {
  if (!hasExited(child)) child.kill(signal);
  return awaitWithGrace(child, graceMs);
}

export function describeOutcome(outcome: Outcome): string {
  if (outcome.killed) return "did not stop in time and was killed (SIGKILL)";
  if (outcome.signal) return `stopped by ${outcome.signal}`;
  return `exited with code ${outcome.code}`;
}

// ---------------------------------------------------------------------------------------------------------------
// A stage in the foreground: its output goes straight to the terminal, Ctrl-C stops it.

export interface ForegroundOptions {
  root: string;
  interrupted: AbortSignal;
  graceMs?: number;
  /** Called once the child is started (the menu shows its PID, as `ps -p PID -T` needs it). */
  onStart?: (pid: number) => void;
  /** Called when the user interrupts it, before waiting for it to stop. */
  onInterrupt?: (graceMs: number) => void;
}

export interface ForegroundOutcome extends Outcome {
  pid: number;
  interrupted: boolean;
}

/**
 * Runs `command` with its output on the terminal until it exits. On an interrupt the child has received the
 * terminal's SIGINT already (same process group): give it the grace period to shut down, then kill it.
 */
export async function runForeground(command: Command, options: ForegroundOptions): Promise<ForegroundOutcome> {
  const graceMs = options.graceMs ?? GRACE_MS;
  const child = spawnCommand(command, { root: options.root, output: "inherit" });
  options.onStart?.(child.pid);
  let interrupted = false;
  let stopping: Promise<Outcome> | undefined;
  const onAbort = (): void => {
    interrupted = true;
    options.onInterrupt?.(graceMs);
    stopping ??= awaitWithGrace(child, graceMs);
  };
  if (options.interrupted.aborted) onAbort();
  else options.interrupted.addEventListener("abort", onAbort, { once: true });
  try {
    await child.exited;
    const outcome = stopping ? await stopping : outcomeOf(child, false);
    // A child killed by SIGINT was interrupted even if its exit is seen before the menu's SIGINT handler runs.
    return { ...outcome, pid: child.pid, interrupted: interrupted || outcome.signal === "SIGINT" };
  } finally {
    options.interrupted.removeEventListener("abort", onAbort);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// A service in the background (the guided demo): its output is read, prefixed and printed line by line.

export class Service {
  readonly child: Subprocess<"ignore", "pipe", "pipe">;
  stdout = "";
  stderr = "";
  private readonly waiters = new Set<() => void>();
  private readonly pumps: Promise<void>[];

  constructor(
    readonly name: string,
    readonly command: Command,
    root: string,
    private readonly print: (line: string) => void,
    env: Record<string, string | undefined> = {},
  ) {
    this.child = spawnCommand(command, { root, output: "pipe", env }) as Subprocess<"ignore", "pipe", "pipe">;
    this.pumps = [this.pump(this.child.stdout, "stdout"), this.pump(this.child.stderr, "stderr")];
  }

  get pid(): number {
    return this.child.pid;
  }

  private async pump(stream: ReadableStream<Uint8Array>, which: "stdout" | "stderr"): Promise<void> {
    const decoder = new TextDecoder();
    let partial = "";
    try {
      for await (const chunk of stream) {
        const text = decoder.decode(chunk, { stream: true });
        this[which] += text;
        const lines = (partial + text).split("\n");
        partial = lines.pop()!;
        for (const line of lines) this.print(line);
        for (const wake of this.waiters) wake();
      }
    } catch {
      // The stream errors if the process is killed mid-write; what was read is kept.
    }
    if (partial !== "") this.print(partial);
  }

  /** Resolves once both output streams are closed, so every line has been printed. */
  async drained(): Promise<void> {
    await Promise.all(this.pumps);
  }

  /** Resolves with the address from its `listening on HOST:PORT` line; rejects if it exits or `interrupted`. */
  waitForListening(interrupted: AbortSignal, timeoutMs = 10_000): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      const finish = (): void => {
        clearTimeout(timer);
        this.waiters.delete(check);
        interrupted.removeEventListener("abort", onAbort);
      };
      const check = (): void => {
        const match = LISTENING_LINE.exec(this.stdout);
        if (match) {
          finish();
          resolve({ host: match[1]!, port: Number(match[2]) });
        }
      };
      const onAbort = (): void => {
        finish();
        reject(new Error("interrupted"));
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`${this.name} did not print "listening on HOST:PORT" within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      interrupted.addEventListener("abort", onAbort, { once: true });
      this.waiters.add(check);
      void this.child.exited.then(async () => {
        await this.drained();
        check();
        if (!LISTENING_LINE.test(this.stdout)) {
          finish();
          reject(new Error(`${this.name} exited (code ${this.child.exitCode}) before listening`));
        }
      });
      check();
    });
  }

  describe(): string {
    return `${commandLine(this.command)}  (pid ${this.pid})`;
  }
}
