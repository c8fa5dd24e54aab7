// The processes the menu starts, and how they are stopped, so that none is left behind on any path.
//
// A stage run from the menu is in the menu's process group, the terminal's foreground group. Ctrl-C makes the
// terminal send SIGINT to that whole group: the child gets it exactly as if it had been started from a shell, and
// the menu gets it too (twice under `bun run menu`, which forwards its own copy). So the menu keeps ONE SIGINT
// handler for its whole life: it never dies of SIGINT, it tells whatever is running that the user interrupted it,
// and that waits for the children to finish their graceful shutdown, killing them after a grace period.
// At a prompt the terminal is in raw mode: Ctrl-C is then a key that the prompt reads, not a signal.

import type { Subprocess } from "bun";
import { type Clock, systemClock } from "../lib/clock.ts";
import {
  awaitWithGrace,
  type ChildLike,
  environment,
  type Outcome,
  outcomeOf,
  type Running,
  spawnProcess,
  stopProcess,
  track,
  trackedChildren,
} from "../lib/processes.ts";
import type { Address } from "../lib/stages.ts";
import { type Command, commandLine } from "./catalogue.ts";

// Moved to lib/processes.ts; re-exported under the names the menu's code and tests use.
export { awaitWithGrace, type Outcome, stopProcess as stopChild } from "../lib/processes.ts";

/** How long a stopped child may take to shut down gracefully before it is killed. */
export const GRACE_MS = 3000;

/** How long after the grace period a shutdown exits anyway, whatever the children or the terminal do. */
export const EXIT_MARGIN_MS = 1000;

/** How often the menu asks whether its terminal is still there (no event says so while a stage runs). */
export const TERMINAL_CHECK_MS = 1000;

/**
 * The longest the menu may take to exit once its terminal is gone or it is told to stop: the next terminal check,
 * then a shutdown's certain exit. What a test may wait for, plus time for a loaded machine.
 */
export const LONGEST_EXIT_MS = TERMINAL_CHECK_MS + GRACE_MS + EXIT_MARGIN_MS;

/** Every child the menu started that has not exited yet (lib/processes.ts kills them if the menu exits first). */
export function liveChildren(): number[] {
  return trackedChildren().map((child) => child.pid);
}

// ---------------------------------------------------------------------------------------------------------------
// Signals.

let onInterrupt: (() => void) | undefined;

/** Why the menu is ending: a signal, or its terminal went away (the pty was closed, stdin ended or failed). */
export type Ending = "SIGTERM" | "SIGHUP" | "terminal gone";

/** 128 + the signal number, as a shell reports it; a terminal that went away is a hangup. */
export const EXIT_CODES: Record<Ending, number> = { SIGTERM: 143, SIGHUP: 129, "terminal gone": 129 };

export interface ShutdownOptions {
  /** The children to stop, asked when the shutdown starts. */
  children: () => ChildLike[];
  graceMs: number;
  /** Tells what is running that it is being stopped (aborts the current interruptible). */
  interrupt: () => void;
  /** Gives the terminal back; it may throw (a terminal that is gone fails every call), the exit happens anyway. */
  restoreTerminal: () => void;
  exit: (code: number) => void;
  clock?: Clock;
}

/**
 * The menu's way out: stops every child (SIGTERM, then SIGKILL after the grace period) and exits with the code of
 * the first reason given; asking again while it stops changes nothing (signals come in pairs under
 * `bun run menu`, as SIGINT does). Nothing may keep the menu alive: the exit is certain EXIT_MARGIN_MS after the
 * grace period, even if a child or the terminal hangs. Everything it waits on comes from `options`, so a test
 * can run it on a clock it moves by hand.
 */
export class Shutdown {
  ending: Ending | undefined;
  private exited = false;

  constructor(private readonly options: ShutdownOptions) {}

  start(why: Ending): void {
    if (this.ending !== undefined) return;
    this.ending = why;
    const { children, graceMs, clock = systemClock } = this.options;
    this.options.interrupt();
    const stopping = children();
    const deadline = clock.setTimeout(() => this.exit(stopping), graceMs + EXIT_MARGIN_MS);
    void Promise.allSettled(stopping.map((child) => stopProcess(child, "SIGTERM", graceMs, clock))).then(() => {
      clock.clearTimeout(deadline);
      this.exit([]);
    });
  }

  /** SIGKILLs `survivors`, restores the terminal if it can, exits; once. */
  private exit(survivors: ChildLike[]): void {
    if (this.exited) return;
    this.exited = true;
    for (const child of survivors) child.kill("SIGKILL");
    try {
      this.options.restoreTerminal();
    } catch {
      // A terminal that is gone fails every call (EIO): there is nothing left to restore.
    }
    this.options.exit(EXIT_CODES[this.ending ?? "SIGTERM"]);
  }
}

let shutdown: Shutdown | undefined;

/**
 * Installs the menu's signal handlers, once. SIGINT interrupts what is running (nothing at a prompt); SIGTERM and
 * SIGHUP shut the menu down (see Shutdown). `restoreTerminal` runs just before the exit.
 */
export function installSignalHandlers(restoreTerminal: () => void, graceMs = GRACE_MS): void {
  shutdown = new Shutdown({
    children: trackedChildren,
    graceMs,
    interrupt: () => onInterrupt?.(),
    restoreTerminal,
    exit: (code) => process.exit(code),
  });
  process.on("SIGINT", () => onInterrupt?.());
  for (const signal of ["SIGTERM", "SIGHUP"] as const) process.on(signal, () => shutDown(signal));
}

/** Shuts the menu down (see Shutdown); without installed handlers, exits at once. */
export function shutDown(why: Ending): void {
  if (shutdown) shutdown.start(why);
  else process.exit(EXIT_CODES[why]);
}

/** True once shutDown has started: what is running then is being stopped, not interrupted by the user. */
export function shuttingDown(): boolean {
  return shutdown?.ending !== undefined;
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

/** The program of a command: "bun" means this very bun binary. */
function argvOf(command: Command): string[] {
  const [program, ...args] = command.argv;
  return [program === "bun" ? process.execPath : program!, ...args];
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
  /** What the child reads on stdin (the pager: the text to page); by default nothing. */
  input?: Uint8Array;
  /** Called once the child is started (the menu shows its PID, as `ps -p PID -T` needs it). */
  onStart?: (pid: number) => void;
  /** Called when the user interrupts it, before waiting for it to stop. */
  onInterrupt?: (graceMs: number) => void;
  clock?: Clock;
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
  // Paths in a command are relative to the project root, which is the child's working directory.
  const child = track(
    Bun.spawn(argvOf(command), {
      cwd: options.root,
      env: environment(command.env),
      stdin: options.input ?? "ignore",
      stdout: "inherit",
      stderr: "inherit",
    }),
  );
  options.onStart?.(child.pid);
  let interrupted = false;
  let stopping: Promise<Outcome> | undefined;
  const onAbort = (): void => {
    interrupted = true;
    options.onInterrupt?.(graceMs);
    stopping ??= awaitWithGrace(child, graceMs, options.clock);
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
  private readonly running: Running;

  constructor(
    readonly name: string,
    readonly command: Command,
    root: string,
    print: (line: string) => void,
    env: Record<string, string | undefined> = {},
  ) {
    const spawnEnv = environment(env, command.env);
    this.running = spawnProcess(argvOf(command), { cwd: root, env: spawnEnv, onLine: (line) => print(line) });
  }

  get child(): Subprocess<"pipe" | "ignore", "pipe", "pipe"> {
    return this.running.proc;
  }

  get pid(): number {
    return this.running.pid;
  }

  get stdout(): string {
    return this.running.stdout.text;
  }

  get stderr(): string {
    return this.running.stderr.text;
  }

  /** Resolves once both output streams are closed, so every line has been printed. */
  drained(): Promise<void> {
    return this.running.drained();
  }

  /** Resolves with the address from its `listening on HOST:PORT` line; rejects if it exits or `interrupted`. */
  waitForListening(interrupted: AbortSignal, timeoutMs = 10_000): Promise<Address> {
    return this.running.waitForListening({ timeoutMs, signal: interrupted, name: this.name });
  }

  describe(): string {
    return `${commandLine(this.command)}  (pid ${this.pid})`;
  }
}
