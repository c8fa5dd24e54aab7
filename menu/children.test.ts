// Starting and stopping the menu's children: a foreground run ends by itself or by Ctrl-C (the terminal's SIGINT,
// which the child gets directly, then a grace period, then SIGKILL); a background service reports its address.

import { expect, test } from "bun:test";
import { ROOT, TempTree, isAlive } from "../test/support/process.ts";
import { Service, liveChildren, runForeground, stopChild } from "./children.ts";

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

test("Ctrl-C: a child without a handler dies of SIGINT, as from a shell", async () => {
  const interrupt = new AbortController();
  const started = performance.now();
  const outcome = await runForeground(
    { argv: ["bun", "tcp_echo_server/003-loop.ts", "--port", "0", "--log-level", "error"], env: { NO_COLOR: "1" } },
    // No handler in 003: SIGINT kills it at whatever point of its start it arrives, as in a shell.
    { root: ROOT, interrupted: interrupt.signal, onStart: (pid) => pressCtrlC(pid, interrupt) },
  );
  expect(outcome).toMatchObject({ code: null, signal: "SIGINT", killed: false, interrupted: true });
  expect(performance.now() - started).toBeLessThan(2500); // it did not wait for the grace period
});

test("Ctrl-C: a child that ignores SIGINT is killed after the grace period", async () => {
  using ready = readiness();
  const interrupt = new AbortController();
  const started = performance.now();
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
  expect(performance.now() - started).toBeLessThan(5000);
  expect(isAlive(outcome.pid)).toBe(false);
  expect(liveChildren()).not.toContain(outcome.pid);
});

test("a background service: its address from the listening line, its output line by line, stopped with SIGINT", async () => {
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
