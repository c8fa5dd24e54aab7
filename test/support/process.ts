// Spawning stages as real processes for the tests (and anything else that needs to run one and find its port).
//
// Every server stage prints exactly one line `listening on HOST:PORT` on stdout once it accepts connections
// (IPv6 hosts in brackets). `startStage` spawns `bun <file> ...args`, waits for that line and hands back the
// address, the captured output and a `stop()` that signals the process and waits for its exit code.
// `await using` disposes of it (SIGKILL if still alive), so no test leaves a process behind even when it fails.

import type { Subprocess } from "bun";
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";

export const ROOT = resolve(import.meta.dir, "..", "..");

/** The line every server stage prints when it is listening. */
export const LISTENING_LINE = /^listening on \[?([^\]\s]+?)\]?:(\d+)$/m;

/** The line a proxy stage with a control API (012 on) prints once the API answers; alone with --api-port. */
export const API_LINE = /^api on \[?([^\]\s]+?)\]?:(\d+)$/m;

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
  /** The stdout line that says the stage is ready, HOST and PORT in its groups (default: LISTENING_LINE). */
  line?: RegExp;
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

  constructor(
    readonly proc: Subprocess<"pipe" | "ignore", "pipe", "pipe">,
    readonly command: string[],
  ) {
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

/** The test's environment without colour (plain text to assert on), plus `extra`. */
function childEnv(extra: Record<string, string> = {}): Record<string, string | undefined> {
  const env: Record<string, string | undefined> = { ...process.env, NO_COLOR: "1", ...extra };
  delete env.FORCE_COLOR; // any value, even "" or "0", turns colour on in picocolors and Bun's console
  return env;
}

/** Spawns `bun <file> ...args` (file relative to the repo root) and returns as soon as it has started. */
export function run(file: string, args: string[] = [], options: RunOptions = {}): Running {
  const command = [...(options.prefix ?? []), process.execPath, resolve(ROOT, file), ...args];
  const proc = Bun.spawn(command, {
    cwd: ROOT,
    env: childEnv(options.env),
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
    const line = options.line ?? LISTENING_LINE;
    const match = await server.stdout.waitFor(line, options.readyTimeoutMs ?? 10_000, 0, `stdout of ${file}`);
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

/** True if `port` can be bound on 127.0.0.1 right now (it may be taken again a moment later). */
export function portIsFree(port: number): boolean {
  try {
    Bun.listen({ hostname: "127.0.0.1", port, socket: { data() {} } }).stop(true);
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Processes by PID, and programs driven in a real pseudo-terminal (the interactive menu).

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
function startTimeOf(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

/** SIGKILLs `pid` if it is still the process seen earlier (a PID reused meanwhile belongs to someone else). */
function killIfSame(pid: number, startTime: string): void {
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

/** Resets the VmHWM peak of `pids` to their current RSS (Linux: writes 5 to /proc/PID/clear_refs). */
export function resetMemoryPeak(pids: number | number[]): void {
  for (const pid of [pids].flat()) writeFileSync(`/proc/${pid}/clear_refs`, "5");
}

let terminalCount = 0;

// Terminals not disposed yet. A test that times out may never reach its disposal: whatever still runs in them is
// killed when the test process exits (synchronously, as "exit" handlers must be).
const openTerminals = new Set<Terminal>();
process.on("exit", () => {
  for (const terminal of openTerminals) terminal.killEverything();
});

/**
 * A program running in a real pseudo-terminal: a private tmux server (its own socket, killed on disposal) with one
 * pane. Keys go in with send-keys; the screen comes back with capture-pane, polled (tmux gives no event).
 *
 * Killing the tmux server does not kill what runs in the pane: a program that mishandles the hangup lives on as
 * an orphan (that is how two menus were once left spinning). So every process seen in the pane (the shell, the
 * program, its children) is recorded by PID each time the screen is read, and disposal SIGKILLs the ones still
 * running, by PID, then kills the server, then fails if any of them is still alive.
 */
export class Terminal implements AsyncDisposable {
  /** The server's socket file, which kill-server leaves behind. */
  private socketPath = "";
  /** The shell tmux started in the pane; the program and its children are its descendants. */
  private shellPid = 0;
  /** The tmux server: once it has exited, the pane's pty is closed. */
  private serverPid = 0;
  /** Every process seen in the pane: PID -> start time. */
  private readonly seen = new Map<number, string>();
  private serverKilled = false;

  private constructor(readonly socket: string) {}

  /** Starts `shellCommand` (run by sh, which then prints its exit status for exitStatus()). */
  static async start(
    shellCommand: string,
    options: { cwd?: string; width?: number; height?: number } = {},
  ): Promise<Terminal> {
    const terminal = new Terminal(`bun-tcp-lab-test-${process.pid}-${++terminalCount}`);
    const size = ["-x", String(options.width ?? 140), "-y", String(options.height ?? 50)];
    // The status is printed rather than read from tmux (#{pane_dead_status} is sometimes never set, tmux 3.3a);
    // remain-on-exit keeps the pane, and what it shows, after the shell exits.
    const command = `${shellCommand}; echo "[exit status $?]"`;
    await terminal.tmux([
      "new-session",
      "-d",
      ...size,
      "-c",
      options.cwd ?? ROOT,
      command,
      ";",
      "set-option",
      "-g",
      "remain-on-exit",
      "on",
    ]);
    openTerminals.add(terminal);
    const [socketPath, shellPid, serverPid] = (
      await terminal.tmux(["display-message", "-p", "#{socket_path}\t#{pane_pid}\t#{pid}"])
    )
      .trim()
      .split("\t");
    terminal.socketPath = socketPath!;
    terminal.shellPid = Number(shellPid);
    terminal.serverPid = Number(serverPid);
    const shellStart = startTimeOf(terminal.shellPid);
    if (shellStart !== undefined) terminal.seen.set(terminal.shellPid, shellStart);
    terminal.track();
    return terminal;
  }

  /** Records the shell and every descendant it has now; returns the living ones. */
  private track(): number[] {
    // Once the shell has exited its PID may name another process, whose descendants are none of ours.
    const shellStart = this.seen.get(this.shellPid);
    if (shellStart === undefined || startTimeOf(this.shellPid) !== shellStart) return [];
    const running = [this.shellPid, ...descendants(this.shellPid)].filter(isAlive);
    for (const pid of running) {
      const startTime = startTimeOf(pid);
      if (startTime !== undefined && !this.seen.has(pid)) this.seen.set(pid, startTime);
    }
    return running;
  }

  /** Every process seen in the pane so far, alive or not (for waitGone). */
  pids(): number[] {
    this.track();
    return [...this.seen.keys()];
  }

  /** The PID of the process in the pane whose command line matches `pattern` (NULs shown as spaces). */
  pidOf(pattern: RegExp): number {
    for (const pid of this.track()) {
      try {
        if (pattern.test(readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " "))) return pid;
      } catch {
        // exited meanwhile
      }
    }
    throw new Error(`no process matching ${pattern} in the terminal`);
  }

  /**
   * Kills the tmux server only, as when the terminal window is closed: the pty goes away and the program gets
   * what a real hangup gives it. What it does then is the test's to check; disposal still kills what is left.
   * Resolves once the server has exited, so the pty is closed (kill-server returns before that).
   */
  async killServer(): Promise<void> {
    this.track();
    this.serverKilled = true;
    await this.tmux(["kill-server"]);
    await waitGone([this.serverPid], 5000);
  }

  private async tmux(args: string[]): Promise<string> {
    const proc = Bun.spawn(["tmux", "-L", this.socket, "-f", "/dev/null", ...args], {
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
    });
    const [out, err, code] = await Promise.all([
      new Response(proc.stdout).text(),
      new Response(proc.stderr).text(),
      proc.exited,
    ]);
    if (code !== 0) throw new Error(`tmux ${args.join(" ")} failed (${code}): ${err.trim()}`);
    return out;
  }

  /** tmux key names, one key each: "Down", "Up", "Enter", "C-c"; text goes through type(). */
  async press(...keys: string[]): Promise<void> {
    for (const key of keys) await this.tmux(["send-keys", key]);
  }

  async type(text: string): Promise<void> {
    await this.tmux(["send-keys", "-l", "--", text]); // "--": text may start with a dash
  }

  /** Everything the program printed (scrollback included), wrapped lines joined, colours dropped. */
  async screen(): Promise<string> {
    this.track(); // as often as the screen is polled: a process is recorded before it could be orphaned
    return this.tmux(["capture-pane", "-p", "-J", "-S", "-"]);
  }

  /** Waits until `pattern` matches the screen text after character `from`; returns the match and its end offset. */
  async waitFor(pattern: RegExp, timeoutMs = 10_000, from = 0): Promise<{ match: RegExpMatchArray; end: number }> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const text = await this.screen();
      const match = text.slice(from).match(pattern);
      if (match) return { match, end: from + match.index! + match[0].length };
      if (performance.now() > deadline)
        throw new Error(`no ${pattern} on the terminal after ${timeoutMs} ms; screen:\n${text}`);
      await Bun.sleep(30);
    }
  }

  /** The PID of the shell that runs the command: the program and its children are its descendants(). */
  async panePid(): Promise<number> {
    return this.shellPid;
  }

  /** Waits for the program to exit and returns its exit status (128 + N if signal N killed it, as sh says). */
  async exitStatus(timeoutMs = 10_000): Promise<number> {
    return Number((await this.waitFor(/^\[exit status (\d+)\]$/m, timeoutMs)).match[1]);
  }

  /** SIGKILLs, by PID, every process seen in the pane that still runs, and kills the tmux server. Synchronous. */
  killEverything(): void {
    if (!this.serverKilled) this.track();
    for (const [pid, startTime] of this.seen) killIfSame(pid, startTime);
    if (!this.serverKilled) {
      Bun.spawnSync(["tmux", "-L", this.socket, "-f", "/dev/null", "kill-server"], {
        stdin: "ignore",
        stdout: "ignore",
        stderr: "ignore",
      });
      this.serverKilled = true;
    }
    if (this.socketPath) rmSync(this.socketPath, { force: true });
    openTerminals.delete(this);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.killEverything();
    await waitGone([...this.seen.keys()], 2000);
  }
}

/**
 * A throwaway project tree for tests that need files the repository does not have (a stage that does not exist
 * yet, a fake one): `files` maps a relative path to its content, or to `{ from }`, a file of this repository to
 * copy. Removed on disposal.
 */
export class TempTree implements Disposable {
  readonly root: string;

  constructor(files: Record<string, string | { from: string }> = {}) {
    this.root = mkdtempSync(join(tmpdir(), "bun-tcp-lab-tree-"));
    for (const [path, content] of Object.entries(files)) this.write(path, content);
  }

  write(path: string, content: string | { from: string }): string {
    const target = join(this.root, path);
    mkdirSync(dirname(target), { recursive: true });
    if (typeof content === "string") writeFileSync(target, content);
    else copyFileSync(resolve(ROOT, content.from), target);
    return target;
  }

  [Symbol.dispose](): void {
    rmSync(this.root, { recursive: true, force: true });
  }
}
