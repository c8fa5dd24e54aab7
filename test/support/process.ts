// Stages as real processes for the tests, programs in a real pseudo-terminal, and throwaway project trees.
//
// Every server stage prints exactly one line `listening on HOST:PORT` on stdout once it accepts connections
// (IPv6 hosts in brackets). `startStage` spawns `bun <file> ...args`, waits for that line and hands back the
// address, the captured output and a `stop()` that signals the process and waits for its exit code.
// `await using` disposes of it (SIGKILL if still alive), so no test leaves a process behind even when it fails.
// The spawning, the output and the /proc readings themselves live in lib/processes.ts, shared with bench/ and menu/.

import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import {
  descendants,
  environment,
  isAlive,
  killIfSame,
  type Running,
  spawnProcess,
  startListening,
  startTimeOf,
  WITHOUT_COLOUR,
  waitGone,
} from "../../lib/processes.ts";
import { ROOT } from "../../lib/stages.ts";

// Moved to lib/ (one home for the tooling); re-exported so that the tests importing them from here keep working.
export {
  descendants,
  isAlive,
  memoryKiB,
  openFds,
  resetMemoryPeak,
  Running,
  waitGone,
} from "../../lib/processes.ts";
export { portIsFree } from "../../lib/sockets.ts";
export { API_LINE, LISTENING_LINE, ROOT } from "../../lib/stages.ts";

export interface RunOptions {
  env?: Record<string, string>;
  /** Milliseconds to wait for the listening line. */
  readyTimeoutMs?: number;
  /** The stdout line that says the stage is ready, HOST and PORT in its groups (default: LISTENING_LINE). */
  line?: RegExp;
  stdin?: "pipe" | "ignore";
  /**
   * A command to run bun under, e.g. `["prlimit", "--nofile=64:64"]` for a lower open-files limit (set both soft
   * and hard: Bun raises its soft limit to the hard one at start), or a namespace wrapper.
   */
  prefix?: string[];
  /**
   * Run `file` as a program of its own (a compiled executable, or a command such as `bunx`) instead of
   * `bun file`: the executables that `bun run build` makes are tested with the same helpers as the stages.
   */
  executable?: boolean;
  /** Working directory (default: the repository root). */
  cwd?: string;
}

/** `bun <file> ...args` (or the executable `file` itself) from the repo root, colour off, as `options` say. */
function bunCommand(file: string, args: string[], options: RunOptions) {
  const program = options.executable ? [file] : [process.execPath, resolve(ROOT, file)];
  const command = [...(options.prefix ?? []), ...program, ...args];
  const env = environment(WITHOUT_COLOUR, options.env ?? {});
  return { command, spawn: { env, stdin: options.stdin, cwd: options.cwd } };
}

/** Spawns `bun <file> ...args` (file relative to the repo root; or the executable `file`) and returns at once. */
export function run(file: string, args: string[] = [], options: RunOptions = {}): Running {
  const { command, spawn } = bunCommand(file, args, options);
  return spawnProcess(command, spawn);
}

/** Spawns a server stage and waits for its `listening on HOST:PORT` line; `host` and `port` are then set. */
export async function startStage(file: string, args: string[] = [], options: RunOptions = {}): Promise<Running> {
  const { command, spawn } = bunCommand(file, args, options);
  const ready = { timeoutMs: options.readyTimeoutMs ?? 10_000, name: file, line: options.line };
  return startListening(command, { ...spawn, ...ready });
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

// ---------------------------------------------------------------------------------------------------------------
// Programs driven in a real pseudo-terminal (the interactive menu).

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
    // Not anchored at the line's start: after Ctrl-C the terminal's "^C" can stand before it.
    return Number((await this.waitFor(/\[exit status (\d+)\]$/m, timeoutMs)).match[1]);
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
