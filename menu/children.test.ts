// Starting and stopping the menu's children: a foreground run ends by itself or by Ctrl-C (the terminal's SIGINT,
// which the child gets directly, then a grace period, then SIGKILL); a background service reports its address.

import { describe, expect, test } from "bun:test";
import { FakeChild, ManualClock } from "../test/support/fakes.ts";
import { ROOT, TempTree, isAlive } from "../test/support/process.ts";
import { EXIT_CODES, EXIT_MARGIN_MS, Service, Shutdown, liveChildren, runForeground, stopChild } from "./children.ts";

const never = new AbortController().signal;

/** A port a child connects to once it is ready for Ctrl-C (its SIGINT handler installed): an event, not a sleep. */
function readiness(): { env: Record<string, string>; ready: Promise<void>; [Symbol.dispose](): void } {
  const { promise, resolve } = Promise.withResolvers<void>();
  const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { open: () => resolve(), data() {} } });
  return { env: { READY_PORT: String(listener.port) }, ready: promise, [Symbol.dispose]: () => listener.stop(true) };
}

/** What the terminal does on Ctrl-C: SIGINT to the child (its process group), and the menu learns of it. */
function pressCtrlC(pid: number, interrupt: AbortController): void {
  process.kill(pid, "SIGINT");
  interrupt.abort();
}

test("a foreground run that ends by itself reports its exit code", async () => {
  using tree = new TempTree({ "exit3.ts": "process.exit(3);\n" });
  const outcome = await runForeground({ argv: ["bun", "exit3.ts"], env: {} }, { root: tree.root, interrupted: never });
  expect(outcome).toMatchObject({ code: 3, signal: null, killed: false, interrupted: false });
  expect(isAlive(outcome.pid)).toBe(false);
});

test("Ctrl-C: a child that handles SIGINT shuts down by itself within the grace period", async () => {
  using tree = new TempTree({
    "graceful.ts": `process.on("SIGINT", () => setTimeout(() => process.exit(0), 100));
await (await Bun.connect({ hostname: "127.0.0.1", port: Number(process.env.READY_PORT), socket: { data() {} } })).end();
setInterval(() => {}, 60_000);
`,
  });
  using ready = readiness();
  const interrupt = new AbortController();
  let pid = 0;
  const outcome = await runForeground(
    { argv: ["bun", "graceful.ts"], env: ready.env },
    {
      root: tree.root,
      interrupted: interrupt.signal,
      graceMs: 5000,
      onStart: (started) => void ready.ready.then(() => pressCtrlC((pid = started), interrupt)),
    },
  );
  expect(outcome).toMatchObject({ pid, code: 0, killed: false, interrupted: true });
});

test("Ctrl-C: a child without a handler dies of SIGINT, as from a shell, not after the grace period", async () => {
  const interrupt = new AbortController();
  const outcome = await runForeground(
    { argv: ["bun", "tcp_echo_server/003-loop.ts", "--port", "0", "--log-level", "error"], env: { NO_COLOR: "1" } },
    // No handler in 003: SIGINT kills it at whatever point of its start it arrives, as in a shell. A grace period
    // longer than the test's timeout: had the menu waited for it, the test would fail.
    { root: ROOT, interrupted: interrupt.signal, graceMs: 120_000, onStart: (pid) => pressCtrlC(pid, interrupt) },
  );
  expect(outcome).toMatchObject({ code: null, signal: "SIGINT", killed: false, interrupted: true });
});

// The grace period's arithmetic is tested to the millisecond in lib/processes.test.ts on a hand-moved clock; this
// is the one end-to-end measurement, with bounds that hold on a loaded machine (a timer never fires early).
test("Ctrl-C: a child that ignores SIGINT is killed after the grace period", async () => {
  using ready = readiness();
  const interrupt = new AbortController();
  let interruptedAt = 0;
  const outcome = await runForeground(
    { argv: ["bun", "menu/fixtures/stubborn.ts"], env: ready.env },
    {
      root: ROOT,
      interrupted: interrupt.signal,
      graceMs: 400,
      onStart: (pid) => void ready.ready.then(() => pressCtrlC(pid, interrupt)),
      onInterrupt: () => void (interruptedAt = performance.now()),
    },
  );
  expect(outcome).toMatchObject({ signal: "SIGKILL", killed: true, interrupted: true });
  expect(performance.now() - interruptedAt).toBeGreaterThanOrEqual(390);
  expect(isAlive(outcome.pid)).toBe(false);
  expect(liveChildren()).not.toContain(outcome.pid);
});

describe("the menu's shutdown (SIGTERM, SIGHUP, terminal gone), on a clock moved by hand", () => {
  const GRACE = 3000;

  function shutdownOf(children: FakeChild[], clock: ManualClock, restoreTerminal: () => void = () => {}) {
    const record = { exits: [] as Array<{ code: number; at: number }>, interrupted: 0, restored: 0 };
    const shutdown = new Shutdown({
      children: () => children,
      graceMs: GRACE,
      clock,
      interrupt: () => void record.interrupted++,
      restoreTerminal: () => {
        record.restored++;
        restoreTerminal();
      },
      exit: (code) => void record.exits.push({ code, at: clock.now() }),
    });
    return { shutdown, record };
  }

  test("children that stop when asked: SIGTERM to all at once, the exit as soon as they are gone", async () => {
    const clock = new ManualClock();
    const quick = new FakeChild(clock, { SIGTERM: { afterMs: 100 } });
    const slower = new FakeChild(clock, { SIGTERM: { afterMs: 2000 } });
    const { shutdown, record } = shutdownOf([quick, slower], clock);
    shutdown.start("SIGTERM");
    expect(record.interrupted).toBe(1); // what was running is told at once
    await clock.advance(1999);
    expect(record.exits).toEqual([]);
    await clock.advance(1);
    expect(record.exits).toEqual([{ code: 143, at: 2000 }]);
    expect([quick, slower].map((child) => child.signals)).toEqual([
      [{ signal: "SIGTERM", at: 0 }],
      [{ signal: "SIGTERM", at: 0 }],
    ]);
    expect(record.restored).toBe(1);
    expect(clock.waiting).toEqual([]); // the deadline is cancelled
  });

  test("a child that ignores SIGTERM: SIGKILL at the end of the grace period, then the exit", async () => {
    const clock = new ManualClock();
    const stubborn = new FakeChild(clock, { SIGTERM: "ignore" });
    const { shutdown, record } = shutdownOf([stubborn], clock);
    shutdown.start("SIGHUP");
    await clock.advance(GRACE - 1);
    expect(stubborn.signals.map((received) => received.signal)).toEqual(["SIGTERM"]);
    await clock.advance(1);
    expect(stubborn.signals).toEqual([
      { signal: "SIGTERM", at: 0 },
      { signal: "SIGKILL", at: GRACE },
    ]);
    expect(record.exits).toEqual([{ code: 129, at: GRACE }]);
  });

  test("nothing keeps the menu alive: a child even SIGKILL does not end, a terminal that throws", async () => {
    const clock = new ManualClock();
    const stuck = new FakeChild(clock, { SIGTERM: "ignore" }, true);
    const { shutdown, record } = shutdownOf([stuck], clock, () => {
      throw new Error("EIO"); // the terminal is gone
    });
    shutdown.start("terminal gone");
    shutdown.start("SIGTERM"); // signals come in pairs: the second changes nothing
    await clock.advance(GRACE + EXIT_MARGIN_MS - 1);
    expect(record.exits).toEqual([]);
    await clock.advance(1);
    expect(record.exits).toEqual([{ code: EXIT_CODES["terminal gone"], at: GRACE + EXIT_MARGIN_MS }]);
    expect(stuck.signals.map((received) => received.signal)).toEqual(["SIGTERM", "SIGKILL", "SIGKILL"]);
    await clock.advance(60_000);
    expect(record.exits).toHaveLength(1); // once
  });

  test("no child running: the exit is immediate", async () => {
    const clock = new ManualClock();
    const { shutdown, record } = shutdownOf([], clock);
    shutdown.start("SIGTERM");
    await clock.advance(0);
    expect(record.exits).toEqual([{ code: 143, at: 0 }]);
  });
});

test("a background service: its address, its output line by line, stopped with SIGINT", async () => {
  const lines: string[] = [];
  const service = new Service(
    "echo",
    { argv: ["bun", "tcp_echo_server/003-loop.ts", "--port", "0"], env: {} },
    ROOT,
    (line) => lines.push(line),
    { NO_COLOR: "1" },
  );
  const { host, port } = await service.waitForListening(never);
  expect(host).toBe("127.0.0.1");
  expect(lines).toContain(`listening on 127.0.0.1:${port}`);
  expect(liveChildren()).toContain(service.pid);
  const outcome = await stopChild(service.child, "SIGINT", 3000);
  await service.drained();
  expect(outcome).toMatchObject({ signal: "SIGINT", killed: false });
  expect(lines.some((line) => / INFO  listening on 127\.0\.0\.1:\d+/.test(line))).toBe(true); // stderr too, no colours
  expect(liveChildren()).not.toContain(service.pid);
});

test("a service that exits before listening, or an interrupt, ends the wait at once", async () => {
  const failing = new Service(
    "echo",
    { argv: ["bun", "tcp_echo_server/003-loop.ts", "--port", "nope"], env: {} },
    ROOT,
    () => {},
  );
  await expect(failing.waitForListening(never)).rejects.toThrow(/exited \(code 2\) before listening/);
  await failing.child.exited;

  const interrupt = new AbortController();
  const stubborn = new Service("x", { argv: ["bun", "-e", "setInterval(() => {}, 60000)"], env: {} }, ROOT, () => {});
  const waiting = stubborn.waitForListening(interrupt.signal, 30_000);
  interrupt.abort();
  await expect(waiting).rejects.toThrow("interrupted");
  expect(await stopChild(stubborn.child, "SIGTERM", 1000)).toMatchObject({ signal: "SIGTERM" });
});
