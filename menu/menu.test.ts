// The menu end to end: without a terminal it prints the catalogue and exits; in a real pseudo-terminal (a private
// tmux server) it is driven with the arrow keys, runs a stage, comes back on Ctrl-C and exits on a second one,
// and no process it started is left behind (checked by PID in /proc).

import { describe, expect, test } from "bun:test";
import { ROOT, TempTree, Terminal, descendants, isAlive, runToExit, waitGone } from "../test/support/process.ts";
import { loadCatalogue, stagesOf } from "./catalogue.ts";
import { LONGEST_EXIT_MS } from "./children.ts";

/**
 * How long a test waits for the menu to be gone: its designed longest exit (the next terminal check, then the
 * shutdown's certain exit after the grace period; tested to the millisecond in children.test.ts) plus room for a
 * loaded machine. Measured: 0.1-0.6 s, about 1.1 s where only the terminal check can notice.
 */
const GONE_WITHIN_MS = LONGEST_EXIT_MS + 3000;

const TOP_PROMPT = /What would you like to explore\?/;

/** The menu's own process; the shell that runs it names menu/menu.ts too, after "sh -c". */
const MENU_PROCESS = /^\S*bun\S* \S*menu\/menu\.ts/;

/**
 * After `command`, the command line the menu shows: the stage's PID (the menu's "(pid N)" line) once the stage
 * listens. The two come in either order: on a busy machine the stage's first lines can reach the screen before
 * the menu's PID line. `end` is past both.
 */
async function stageListening(terminal: Terminal, command: RegExp): Promise<{ pid: number; end: number }> {
  const shown = await terminal.waitFor(command);
  const pid = await terminal.waitFor(/\(pid (\d+)\)/, 10_000, shown.end);
  const listening = await terminal.waitFor(/^listening on 127\.0\.0\.1:\d+$/m, 10_000, shown.end);
  return { pid: Number(pid.match[1]), end: Math.max(pid.end, listening.end) };
}

/** In a menu on a tree whose only stage is echo 003: runs it on a free port; resolves with its PID once it listens. */
async function runLoopStage(terminal: Terminal): Promise<number> {
  // One key per prompt, each once the prompt is shown: keys pressed between two prompts are lost.
  await terminal.waitFor(TOP_PROMPT);
  await terminal.press("Enter"); // Echo server
  await terminal.waitFor(/● 003  a loop/);
  await terminal.press("Enter");
  await terminal.waitFor(/Port to listen on/);
  await terminal.type("0");
  await terminal.press("Enter");
  await terminal.waitFor(/● info/);
  await terminal.press("Enter");
  return (await stageListening(terminal, /bun tcp_echo_server\/003-loop\.ts --port 0\n/)).pid;
}

describe("without a terminal", () => {
  test("stdin and stdout not terminals: the catalogue with a command line per stage, exit 0, promptly", async () => {
    const started = performance.now();
    const { code, stdout, stderr } = await runToExit("menu/menu.ts", [], { timeoutMs: 10_000 });
    const elapsed = performance.now() - started;
    expect({ code, stderr }).toEqual({ code: 0, stderr: "" });
    for (const stage of loadCatalogue(ROOT).stages)
      expect(stdout).toContain(`  ${stage.label}  ${stage.header.lesson}\n`);
    expect(stdout).toContain("  001  simple one echo\n       PORT=5000 bun tcp_echo_server/001-simple-one-echo.ts\n");
    expect(stdout).toContain(
      "  003  a loop, and the socket options\n       bun tcp_echo_server/003-loop.ts --port 5000\n",
    );
    expect(stdout).not.toContain("\x1b["); // not a terminal: no colour
    console.log(`catalogue without a terminal: ${elapsed.toFixed(0)} ms`);
  });

  // docs/menu.md once showed "Echo server (5 stages)" and "Proxy (none yet)" long after both had changed.
  test("docs/menu.md shows the real catalogue: its --list block and the stage counts", async () => {
    const doc = await Bun.file(`${ROOT}/docs/menu.md`).text();
    const block = /^\$ bun run menu --list[^\n]*\n([^]*?)\n```/m.exec(doc)?.[1];
    const { stdout } = await runToExit("menu/menu.ts", ["--list"]);
    const regenerate = "docs/menu.md is out of date: paste the output of `bun run menu --list` into it";
    expect(block, regenerate).toBe(stdout.trimEnd());
    const echo = stagesOf(loadCatalogue(ROOT), "echo").length;
    expect(doc, regenerate).toContain(`│  ● Echo server (${echo} stages in tcp_echo_server/)`);
  });

  test("stdin an open pipe that never ends: it still does not wait for input", async () => {
    const { code, stdout } = await runToExit("menu/menu.ts", [], { stdin: "pipe", timeoutMs: 10_000 });
    expect(code).toBe(0);
    expect(stdout).toContain("Echo server  (tcp_echo_server/)");
  });

  test("--help, and a usage error in one line with exit 2", async () => {
    const help = await runToExit("menu/menu.ts", ["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toStartWith("Usage: bun run menu [options]");
    const wrong = await runToExit("menu/menu.ts", ["--colour"]);
    expect(wrong.code).toBe(2);
    expect(wrong.stdout).toBe("");
    expect(wrong.stderr).toMatch(/^error: .*--colour.* \(see --help\)\n$/);
  });
});

describe("in a terminal", () => {
  test("bun run menu --list on a terminal prints the catalogue and exits 0", async () => {
    await using terminal = await Terminal.start("bun run menu --list");
    expect(await terminal.exitStatus()).toBe(0);
    const screen = await terminal.screen();
    expect(screen).toContain("       bun tcp_echo_server/003-loop.ts --port 5000");
    expect(screen).not.toMatch(TOP_PROMPT);
  });

  test("arrow keys to 003, it listens, Ctrl-C stops it, back at the menu, Ctrl-C exits; nothing left", async () => {
    // The stage list starts on the newest echo stage; 003 is that many places up (stages land over time).
    const echo = stagesOf(loadCatalogue(ROOT), "echo");
    const upToLoop = echo.length - 1 - echo.findIndex((stage) => stage.file === "tcp_echo_server/003-loop.ts");
    await using terminal = await Terminal.start("bun run menu");
    await terminal.waitFor(TOP_PROMPT);
    await terminal.press("Enter"); // Echo server: the first area
    await terminal.waitFor(/Echo server: which stage\?/);
    await terminal.press(...Array<string>(upToLoop).fill("Up"));
    await terminal.waitFor(/● 003  a loop, and the socket options/);
    await terminal.press("Enter");
    await terminal.waitFor(/Port to listen on, 0 for a free one/);
    await terminal.type("0");
    await terminal.press("Enter");
    await terminal.waitFor(/Log level/);
    await terminal.press("Enter"); // info, its default
    const { pid: stagePid, end: listening } = await stageListening(
      terminal,
      /bun tcp_echo_server\/003-loop\.ts --port 0\n/,
    );
    expect(isAlive(stagePid)).toBe(true);
    const menuTree = descendants(await terminal.panePid()); // sh -> bun run -> the menu -> the stage
    expect(menuTree).toContain(stagePid);

    await terminal.press("C-c");
    const stopped = await terminal.waitFor(
      new RegExp(`tcp_echo_server/003-loop\\.ts \\(pid ${stagePid}\\) stopped by SIGINT`),
      10_000,
      listening,
    );
    await terminal.waitFor(TOP_PROMPT, 10_000, stopped.end); // back at the menu
    expect(isAlive(stagePid)).toBe(false);
    expect(descendants(await terminal.panePid()).filter((pid) => pid !== stagePid)).toEqual(
      menuTree.filter((pid) => pid !== stagePid),
    );

    await terminal.press("C-c");
    expect(await terminal.exitStatus()).toBe(0);
    expect(await terminal.screen()).toContain("Bye.");
    await waitGone(terminal.pids(), 2000); // everything that ran in the pane, the stage included
  });

  test("a new proxy stage: its questions come from its --help; what changed shows the diff", async () => {
    using tree = new TempTree({
      "tcp_echo_server/002-logging-class-cli.ts": { from: "tcp_echo_server/002-logging-class-cli.ts" },
      "tcp_echo_server/003-loop.ts": { from: "tcp_echo_server/003-loop.ts" },
      "tcp_proxy/001-fake.ts": { from: "menu/fixtures/fake-proxy.ts" },
    });
    await using terminal = await Terminal.start(`bun ${ROOT}/menu/menu.ts --root ${tree.root}`);
    await terminal.waitFor(TOP_PROMPT);
    await terminal.press("Down", "Down", "Down"); // Echo server, Proxy, (Client: none, skipped), Guided demo, Tools
    await terminal.waitFor(/● Tools/);
    await terminal.press("Enter");
    await terminal.waitFor(/● What changed/);
    await terminal.press("Enter");
    await terminal.waitFor(/● tcp_echo_server\/002 -> 003  a loop, and the socket options/);
    await terminal.press("Enter");
    await terminal.waitFor(/^\+ \* 003 - a loop, and the socket options$/m); // on the pager's first page
    await terminal.press("q");
    const done = await terminal.waitFor(/tcp_echo_server\/003-loop\.ts differs from tcp_echo_server\/002-/);
    await terminal.waitFor(TOP_PROMPT, 10_000, done.end);

    await terminal.press("Up", "Up"); // the menu is back on Tools: up past Guided demo (and Client, none) to Proxy
    await terminal.waitFor(/● Proxy \(1 stage in tcp_proxy\/\)/);
    await terminal.press("Enter");
    await terminal.waitFor(/● 001  a fake proxy, for the menu's tests/);
    await terminal.press("Enter");
    await terminal.waitFor(/Port to listen on, 0 for a free one  \(--port\)/);
    await terminal.type("0");
    await terminal.press("Enter");
    await terminal.waitFor(/The server to forward to  \(--upstream\)/);
    await terminal.press("Enter"); // its default, 127.0.0.1:5000
    await terminal.waitFor(/Other options\? \(--idle-timeout SECONDS; Enter for none\)/);
    await terminal.type("--idle-timeout 5");
    await terminal.press("Enter");
    const started = await stageListening(
      terminal,
      /bun tcp_proxy\/001-fake\.ts --port 0 --upstream 127\.0\.0\.1:5000 --idle-timeout 5\n/,
    );

    await terminal.press("C-c");
    const stopped = await terminal.waitFor(
      /tcp_proxy\/001-fake\.ts \(pid \d+\) exited with code 0/,
      10_000,
      started.end,
    );
    await terminal.waitFor(TOP_PROMPT, 10_000, stopped.end);
    expect(isAlive(started.pid)).toBe(false);
    await terminal.press("C-c");
    expect(await terminal.exitStatus()).toBe(0);
    await waitGone(terminal.pids(), 2000);
  });

  test.skipIf(Bun.which("less") === null)("what changed starts on echo 001 -> 002, paged from its top", async () => {
    // 80 x 24: the diff is ten screens long. Printed straight, its top would scroll away.
    await using terminal = await Terminal.start("bun menu/menu.ts", { width: 80, height: 24 });
    await terminal.waitFor(TOP_PROMPT);
    await terminal.press("Up", "Up"); // from Echo server, up past Exit to Tools
    await terminal.waitFor(/● Tools/);
    await terminal.press("Enter");
    await terminal.waitFor(/● What changed/);
    await terminal.press("Enter");
    await terminal.waitFor(/● tcp_echo_server\/001 -> 002  logging, a class, a command line/);
    await terminal.press("Enter");
    const top = "diff --git a/tcp_echo_server/001-simple-one-echo.ts b/tcp_echo_server/002-logging-class-cli.ts";
    // less waits on its first page, its ":" prompt on the last row (after a wrapped line, so not on its own).
    const paged = await terminal.waitFor(new RegExp(`^${top}$[^]*:\\s*(?![^])`, "m")); // (?![^]): the end
    await terminal.press("q");
    const done = await terminal.waitFor(
      /002-logging-class-cli\.ts differs from tcp_echo_server\/001-/,
      10_000,
      paged.end,
    );
    await terminal.waitFor(TOP_PROMPT, 10_000, done.end);
    await terminal.press("C-c");
    expect(await terminal.exitStatus()).toBe(0);
  });

  test("the menu is sent SIGTERM while a stage runs: it stops the stage, then exits 143; nothing left", async () => {
    using tree = new TempTree({ "tcp_echo_server/003-loop.ts": { from: "tcp_echo_server/003-loop.ts" } });
    await using terminal = await Terminal.start(`bun ${ROOT}/menu/menu.ts --root ${tree.root}`);
    await runLoopStage(terminal);
    // Not Ctrl-C: the terminal does not signal the stage, so the menu must pass it on.
    process.kill(terminal.pidOf(MENU_PROCESS), "SIGTERM");
    expect(await terminal.exitStatus()).toBe(143);
    await waitGone(terminal.pids(), 5000);
  });

  test("guided demo, Ctrl-C while the client runs: both stopped, back at the menu; nothing left", async () => {
    using tree = new TempTree({
      "tcp_echo_server/003-loop.ts": { from: "tcp_echo_server/003-loop.ts" },
      "test/001-client-hang.ts": { from: "menu/fixtures/hanging-client.ts" },
    });
    await using terminal = await Terminal.start(`bun ${ROOT}/menu/menu.ts --root ${tree.root}`);
    await terminal.waitFor(TOP_PROMPT);
    await terminal.press("Down", "Down"); // Echo server, (Proxy: none, skipped), Client, Guided demo
    await terminal.waitFor(/● Guided demo/);
    await terminal.press("Enter");
    await terminal.waitFor(/Which echo server\?/);
    await terminal.press("Enter");
    await terminal.waitFor(/003 serves one client and exits[\s\S]*How many connections  \(-n\)/);
    await terminal.press("Enter"); // connections: 1
    const client = await terminal.waitFor(/^client\| connected to 127\.0\.0\.1:\d+, waiting forever$/m);
    const screen = await terminal.screen();
    const pids = [...screen.matchAll(/^> (?:echo|client): .*\(pid (\d+)\)$/gm)].map((match) => Number(match[1]));
    expect(pids).toHaveLength(2);
    expect(pids.every(isAlive)).toBe(true);

    await terminal.press("C-c");
    const interrupted = await terminal.waitFor(/Demo interrupted/, 10_000, client.end);
    await terminal.waitFor(TOP_PROMPT, 10_000, interrupted.end);
    expect(pids.filter(isAlive)).toEqual([]);

    await terminal.press("C-c");
    expect(await terminal.exitStatus()).toBe(0);
    await waitGone(terminal.pids(), 2000);
  });
});

// Closing the terminal (here: killing the tmux server, which closes the pty) once left menus orphaned at a prompt,
// spinning at half a core and deaf to SIGTERM: their SIGHUP handler threw on the dead pty before it could exit.
describe("the terminal goes away", () => {
  test("at a prompt: the menu exits", async () => {
    using tree = new TempTree({ "tcp_echo_server/003-loop.ts": { from: "tcp_echo_server/003-loop.ts" } });
    await using terminal = await Terminal.start(`bun ${ROOT}/menu/menu.ts --root ${tree.root}`);
    await terminal.waitFor(TOP_PROMPT);
    const menu = terminal.pidOf(MENU_PROCESS);
    await terminal.killServer();
    await waitGone([menu], GONE_WITHIN_MS);
  });

  test("while a stage runs: the menu and the stage are gone", async () => {
    using tree = new TempTree({ "tcp_echo_server/003-loop.ts": { from: "tcp_echo_server/003-loop.ts" } });
    await using terminal = await Terminal.start(`bun ${ROOT}/menu/menu.ts --root ${tree.root}`);
    const stage = await runLoopStage(terminal);
    const menu = terminal.pidOf(MENU_PROCESS);
    await terminal.killServer();
    await waitGone([menu, stage], GONE_WITHIN_MS);
  });

  test("no SIGHUP (a session of its own) while a stage runs: the menu notices, stops the stage, exits", async () => {
    // Outside the terminal's session the kernel signals neither of them, and nothing reads stdin during a run:
    // only the menu's own check of its terminal can end them.
    using tree = new TempTree({ "tcp_echo_server/003-loop.ts": { from: "tcp_echo_server/003-loop.ts" } });
    await using terminal = await Terminal.start(`setsid --wait bun ${ROOT}/menu/menu.ts --root ${tree.root}`);
    const stage = await runLoopStage(terminal);
    const menu = terminal.pidOf(MENU_PROCESS);
    await terminal.killServer();
    await waitGone([menu, stage], GONE_WITHIN_MS); // only the terminal check can notice
  });

  test("SIGTERM once the terminal is gone: the menu exits", async () => {
    // As the orphans were found: the pty already closed when SIGTERM comes. The menu is stopped meanwhile, so that
    // it cannot notice the hangup first; in its own session, so that no SIGHUP comes either.
    using tree = new TempTree({ "tcp_echo_server/003-loop.ts": { from: "tcp_echo_server/003-loop.ts" } });
    await using terminal = await Terminal.start(`setsid --wait bun ${ROOT}/menu/menu.ts --root ${tree.root}`);
    await terminal.waitFor(TOP_PROMPT);
    const menu = terminal.pidOf(MENU_PROCESS);
    process.kill(menu, "SIGSTOP");
    try {
      await terminal.killServer();
      process.kill(menu, "SIGTERM");
    } finally {
      process.kill(menu, "SIGCONT");
    }
    await waitGone([menu], GONE_WITHIN_MS);
  });
});
