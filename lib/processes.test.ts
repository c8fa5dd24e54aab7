// The shared process helpers: the grace-period arithmetic on a clock moved by hand, then real processes (a
// stage's listening line, the ways waiting for it ends, output line by line, a whole tree stopped at once).

import { describe, expect, test } from "bun:test";
import { FakeChild, ManualClock } from "../test/support/fakes.ts";
import { TempTree } from "../test/support/process.ts";
import {
  awaitWithGrace,
  descendants,
  isAlive,
  killTree,
  spawnProcess,
  startListening,
  stopProcess,
} from "./processes.ts";

describe("grace periods, on a clock moved by hand", () => {
  test("a child that ignores the request is SIGKILLed exactly when the grace period ends, not before", async () => {
    const clock = new ManualClock();
    const child = new FakeChild(clock, { SIGTERM: "ignore" });
    const stopping = stopProcess(child, "SIGTERM", 3000, clock);
    await clock.advance(2999);
    expect(child.signals).toEqual([{ signal: "SIGTERM", at: 0 }]);
    await clock.advance(1);
    expect(await stopping).toEqual({ code: null, signal: "SIGKILL", killed: true });
    expect(child.signals).toEqual([
      { signal: "SIGTERM", at: 0 },
      { signal: "SIGKILL", at: 3000 },
    ]);
  });

  test("a child that stops within the grace period is never killed, and no timer is left behind", async () => {
    const clock = new ManualClock();
    const child = new FakeChild(clock, { SIGINT: { afterMs: 2500 } });
    const stopping = stopProcess(child, "SIGINT", 3000, clock);
    await clock.advance(2500);
    expect(await stopping).toEqual({ code: 0, signal: null, killed: false });
    expect(clock.waiting).toEqual([]);
    expect(child.signals.map((received) => received.signal)).toEqual(["SIGINT"]);
  });

  // awaitWithGrace sends nothing first: the terminal's Ctrl-C did.
  test("awaitWithGrace only kills, at the end; a child already gone gets no signal", async () => {
    const clock = new ManualClock();
    const child = new FakeChild(clock);
    const waiting = awaitWithGrace(child, 400, clock);
    await clock.advance(400);
    expect(await waiting).toMatchObject({ signal: "SIGKILL", killed: true });
    const gone = new FakeChild(clock);
    gone.exit(3);
    expect(await stopProcess(gone, "SIGTERM", 400, clock)).toEqual({ code: 3, signal: null, killed: false });
    expect(gone.signals).toEqual([]);
  });
});

describe("real processes", () => {
  test("startListening: the address from the listening line; stdout and stderr line by line", async () => {
    const lines: string[] = [];
    await using server = await startListening(
      [process.execPath, "tcp_echo_server/003-loop.ts", "--port", "0", "--log-level", "error"],
      { onLine: (line, stream) => lines.push(`${stream}: ${line}`) },
    );
    expect(server.host).toBe("127.0.0.1");
    expect(lines).toContain(`stdout: listening on 127.0.0.1:${server.port}`);
    expect(await server.stop("SIGINT")).toBe(130);
  });

  test("waiting for the listening line ends with a clear reason: exit, timeout, interrupt", async () => {
    using tree = new TempTree({
      "fails.ts": 'console.error("cannot listen"); process.exit(3);\n',
      "silent.ts": "setInterval(() => {}, 60_000);\n",
    });
    const bun = process.execPath;
    const failing = startListening([bun, "fails.ts"], { cwd: tree.root, name: "fails" });
    await expect(failing).rejects.toThrow(
      /^fails exited \(code 3\) before listening\nstdout:\n\nstderr:\ncannot listen/,
    );
    const silent = startListening([bun, "silent.ts"], { cwd: tree.root, name: "silent", timeoutMs: 300 });
    await expect(silent).rejects.toThrow('silent did not print "listening on HOST:PORT" within 0.3 s');
    await using waiting = spawnProcess([bun, "silent.ts"], { cwd: tree.root });
    const interrupt = new AbortController();
    const listening = waiting.waitForListening({ signal: interrupt.signal });
    interrupt.abort();
    await expect(listening).rejects.toThrow("interrupted");
  });

  test("killTree takes a process and its children down together", async () => {
    using tree = new TempTree({
      "parent.ts": `Bun.spawn([process.execPath, "-e", "setInterval(() => {}, 60000)"]);
console.log("listening on 127.0.0.1:1");
setInterval(() => {}, 60_000);
`,
    });
    await using parent = await startListening([process.execPath, "parent.ts"], { cwd: tree.root });
    const children = descendants(parent.pid); // Bun.spawn returned before the listening line: the child exists
    expect(children).toHaveLength(1);
    await killTree(parent.proc);
    expect([parent.pid, ...children].filter(isAlive)).toEqual([]);
  });
});
