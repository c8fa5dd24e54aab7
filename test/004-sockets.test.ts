// test/004-sockets.ts against connections the test holds open to a real stage 005, so the right counts are known.

import { describe, expect, test } from "bun:test";
import { TestClient, unusedPort } from "./support/net.ts";
import { run, runToExit, startStage, Terminal } from "./support/process.ts";

const TOOL = "test/004-sockets.ts";
const SERVER = "tcp_echo_server/005-bounded-concurrency.ts";

type Counts = Record<string, number>;
interface Census {
  port: number | null;
  states: Counts;
  total: number;
  local?: Counts;
  remote?: Counts;
}

async function census(port: number): Promise<Census> {
  const { code, stdout, stderr } = await runToExit(TOOL, ["--port", String(port), "--json"]);
  expect({ code, stderr }).toEqual({ code: 0, stderr: "" });
  return JSON.parse(stdout) as Census;
}

/** Asks again until `accept` holds: the kernel finishes a close (FIN, ACK) a moment after the process sees it. */
async function censusUntil(port: number, accept: (c: Census) => boolean, timeoutMs = 5000): Promise<Census> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const result = await census(port);
    if (accept(result) || Date.now() > deadline) return result;
  }
}

/**
 * A free port that no socket on the machine mentions, not even a TIME_WAIT left by an earlier test's server on the
 * same port number: such a leftover could expire in the middle of a count and make it off by one.
 */
async function untouchedPort(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = unusedPort();
    if ((await census(port)).total === 0) return port;
  }
  throw new Error("no port without leftover sockets in 20 tries");
}

async function openClients(count: number, port: number, host = "127.0.0.1"): Promise<TestClient[]> {
  return Promise.all(Array.from({ length: count }, () => TestClient.connect(port, host)));
}

describe("004-sockets", () => {
  test("counts the connections the test holds, from both ends, and the TIME_WAIT their closing leaves", async () => {
    await using server = await startStage(SERVER, ["--port", String(await untouchedPort()), "--log-level", "info"]);
    const clients = await openClients(30, server.port);
    try {
      const open = await census(server.port);
      expect(open.local).toMatchObject({ LISTEN: 1, ESTABLISHED: 30 }); // the server's ends (and its listener)
      expect(open.remote).toMatchObject({ LISTEN: 0, ESTABLISHED: 30 }); // the clients' ends
      expect(open.states).toMatchObject({ LISTEN: 1, ESTABLISHED: 60 }); // on loopback, both ends are here
      // Clients that close first keep TIME_WAIT on their side; the server's ends go away.
      const timeWaitBefore = open.remote!.TIME_WAIT!;
      for (const client of clients.slice(0, 10)) client.close();
      await server.waitForLog(/(done[^]*){10}/);
      const after = await censusUntil(
        server.port,
        (c) => c.remote!.TIME_WAIT === timeWaitBefore + 10 && c.local!.ESTABLISHED === 20,
      );
      expect(after.local).toMatchObject({ LISTEN: 1, ESTABLISHED: 20 });
      expect(after.remote).toMatchObject({ ESTABLISHED: 20, TIME_WAIT: timeWaitBefore + 10 });
    } finally {
      for (const client of clients) client.close();
    }
  });

  test("IPv6 sockets are counted too (from /proc/net/tcp6)", async () => {
    await using server = await startStage(SERVER, ["--host", "::1", "--port", "0", "--log-level", "warn"]);
    const clients = await openClients(5, server.port, "::1");
    try {
      const result = await census(server.port);
      expect(result.local).toMatchObject({ LISTEN: 1, ESTABLISHED: 5 });
      expect(result.remote).toMatchObject({ ESTABLISHED: 5 });
    } finally {
      for (const client of clients) client.close();
    }
  });

  test.skipIf(Bun.which("ss") === null)("agrees with the ss commands it documents", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
    const clients = await openClients(12, server.port);
    try {
      const ss = (filter: string): number => {
        const out = Bun.spawnSync(["sh", "-c", `ss -Htan ${filter} | wc -l`]).stdout.toString();
        return Number(out.trim());
      };
      const result = await census(server.port);
      const p = server.port;
      expect(ss(`state established '( sport = :${p} or dport = :${p} )'`)).toBe(result.states.ESTABLISHED!);
      expect(ss(`state established '( sport = :${p} )'`)).toBe(result.local!.ESTABLISHED!);
      expect(ss(`state listening '( sport = :${p} )'`)).toBe(result.local!.LISTEN!);
    } finally {
      for (const client of clients) client.close();
    }
  });

  test("the text table shows the same counts as --json", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
    const clients = await openClients(7, server.port);
    try {
      const [json, text] = [await census(server.port), await runToExit(TOOL, ["--port", String(server.port)])];
      expect(text.code).toBe(0);
      expect(text.stdout).toStartWith(
        `TCP sockets with port ${server.port} at either end (local = ours, remote = the far end's), ` +
          "from /proc/net/tcp and /proc/net/tcp6\n",
      );
      expect(text.stdout).toMatch(/^ {2}state +local +remote +total$/m);
      expect(text.stdout).toMatch(new RegExp(`^ {2}LISTEN +1 +0 +${json.states.LISTEN}$`, "m"));
      expect(text.stdout).toMatch(new RegExp(`^ {2}ESTABLISHED +7 +7 +14$`, "m"));
      expect(text.stdout).toMatch(new RegExp(`^ {2}total +\\d+ +\\d+ +${json.total}$`, "m"));
      const all = await runToExit(TOOL, []); // without --port: every TCP socket, at least ours
      const established = Number(/^ {2}ESTABLISHED +(\d+)$/m.exec(all.stdout)?.[1]);
      expect(established).toBeGreaterThanOrEqual(14);
    } finally {
      for (const client of clients) client.close();
    }
  });

  test("--watch refreshes (one line each time when piped) until SIGINT, then exits 0", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
    await using watcher = run(TOOL, ["--watch", "--interval", "0.1", "--port", String(server.port)]);
    const line = /^\d{4}-\d\d-\d\dT[\d:.]+Z LISTEN=1 total=\d+$/m;
    await watcher.stdout.waitFor(new RegExp(`(${line.source}\\n){3}`, "m"), 10_000);
    watcher.proc.kill("SIGINT");
    expect(await watcher.waitExit()).toBe(0);
  });

  // The title is wider than 80 columns: it wraps, and a redraw that went back up one row per line (not per row on
  // the screen) left a copy of it above the table at every refresh.
  test.skipIf(Bun.which("tmux") === null)("--watch on an 80-column terminal redraws in place", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
    const command = `${process.execPath} ${TOOL} --watch --interval 0.1 --port ${server.port}`;
    await using terminal = await Terminal.start(command, { width: 80, height: 30 });
    const stamp = "\\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z"; // the time on the table's last line, new at each refresh
    let last = (await terminal.waitFor(new RegExp(`^${stamp}$`, "m"))).match[0];
    for (let refresh = 0; refresh < 3; refresh++) {
      last = (await terminal.waitFor(new RegExp(`^(?!${last}$)${stamp}$`, "m"))).match[0];
    }
    const screen = await terminal.screen(); // the scrollback too: nothing may have been pushed up there
    expect(screen.match(/TCP sockets with port/g)).toHaveLength(1);
    expect(screen.match(/^ {2}state +local +remote +total$/gm)).toHaveLength(1);
    expect(screen.match(new RegExp(`^${stamp}$`, "gm"))).toHaveLength(1);
    await terminal.press("C-c");
    expect(await terminal.exitStatus()).toBe(0);
  });

  test("usage: --help on stdout with exit 0; bad options are one line on stderr with exit 2", async () => {
    const help = await runToExit(TOOL, ["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toStartWith("Usage: bun test/004-sockets.ts [options]");
    for (const args of [["--port", "0"], ["--port", "x"], ["--interval", "0"], ["--what"]]) {
      const bad = await runToExit(TOOL, args);
      expect({ args, code: bad.code, stdout: bad.stdout }).toEqual({ args, code: 2, stdout: "" });
      expect(bad.stderr).toMatch(/^error: [^\n]+ \(see --help\)\n$/);
    }
  });
});
