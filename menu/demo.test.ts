// The guided demo, without the prompts: echo stage, optional proxy, client, summary, and every process stopped
// on every path. Real echo stages; fake proxy and client stages (menu/fixtures) in temporary trees where the
// real ones do not exist yet.

import { expect, test } from "bun:test";
import { ROOT, TempTree, isAlive, waitGone } from "../test/support/process.ts";
import { type Catalogue, type Stage, loadCatalogue } from "./catalogue.ts";
import { builtInCheck, CHECK_LINE, runDemo } from "./demo.ts";

const never = new AbortController().signal;

function stage(catalogue: Catalogue, file: string): Stage {
  const found = catalogue.stages.find((candidate) => candidate.file === file);
  if (!found) throw new Error(`${file} not in ${catalogue.root}`);
  return found;
}

test("no client stage: the built-in check gets the uppercase line from the real 003, then 003 stops", async () => {
  const catalogue = loadCatalogue(ROOT);
  const lines: string[] = [];
  const report = await runDemo(
    catalogue,
    { echo: stage(catalogue, "tcp_echo_server/003-loop.ts"), connections: 1 },
    {
      interrupted: never,
      print: (line) => lines.push(line),
      colour: false,
    },
  );
  expect(report.summary).toMatch(
    /^built-in check: sent "hello from the menu\\n", got "HELLO FROM THE MENU\\n" in [\d.]+ ms: OK$/,
  );
  expect(report).toMatchObject({ ok: true, interrupted: false });
  expect(report.pids).toHaveLength(1);
  expect(lines[0]).toBe(`> echo: bun tcp_echo_server/003-loop.ts --port 0  (pid ${report.pids[0]})`);
  expect(lines).toContain("> client: none yet (no test/NNN-client*.ts), so the menu checks by itself");
  expect(lines.some((line) => /^echo  \| listening on 127\.0\.0\.1:\d+$/.test(line))).toBe(true);
  expect(lines.at(-1)).toMatch(
    new RegExp(`^> echo \\(pid ${report.pids[0]}\\) (exited with code 0|stopped by SIGINT)$`),
  );
  expect(report.pids.filter(isAlive)).toEqual([]);
});

test("001 through its PORT variable works in the demo too", async () => {
  const catalogue = loadCatalogue(ROOT);
  const lines: string[] = [];
  const report = await runDemo(
    catalogue,
    { echo: stage(catalogue, "tcp_echo_server/001-simple-one-echo.ts"), connections: 1 },
    {
      interrupted: never,
      print: (line) => lines.push(line),
      colour: false,
    },
  );
  expect(report.ok).toBe(true);
  expect(lines[0]).toStartWith("> echo: PORT=0 bun tcp_echo_server/001-simple-one-echo.ts  (pid ");
});

test("echo, a proxy in front, a client through it: the client's summary, then all three stopped", async () => {
  using tree = new TempTree({
    // A tiny echo server that serves many clients, as the echo stages from 004 on do (they land over time).
    "tcp_echo_server/004-echo.ts": `/*
 * 004 - many clients, for the demo test
 */
const listener = Bun.listen({
  hostname: "127.0.0.1",
  port: Number(process.env.PORT),
  socket: {
    data: (socket, data) => void socket.write(new TextEncoder().encode(new TextDecoder().decode(data).toUpperCase())),
  },
});
process.on("SIGINT", () => { listener.stop(true); process.exit(0); });
console.log("listening on 127.0.0.1:" + listener.port);
`,
    "tcp_proxy/001-fake.ts": { from: "menu/fixtures/fake-proxy.ts" },
    "test/001-client-fake.ts": { from: "menu/fixtures/fake-client.ts" },
  });
  const catalogue = loadCatalogue(tree.root);
  const lines: string[] = [];
  const report = await runDemo(
    catalogue,
    {
      echo: stage(catalogue, "tcp_echo_server/004-echo.ts"),
      proxy: stage(catalogue, "tcp_proxy/001-fake.ts"),
      client: stage(catalogue, "test/001-client-fake.ts"),
      connections: 3,
    },
    { interrupted: never, print: (line) => lines.push(line), colour: false },
  );
  expect(report).toMatchObject({ ok: true, interrupted: false, summary: "summary: 3/3 connections echoed correctly" });
  const [echoPid, proxyPid, clientPid] = report.pids;
  const echoPort = lines.join("\n").match(/^echo  \| listening on 127\.0\.0\.1:(\d+)$/m)![1];
  const proxyPort = lines.join("\n").match(/^proxy \| listening on 127\.0\.0\.1:(\d+)$/m)![1];
  expect(lines).toContain(
    `> proxy: bun tcp_proxy/001-fake.ts --port 0 --upstream 127.0.0.1:${echoPort}  (pid ${proxyPid})`,
  );
  expect(lines).toContain(`> client: bun test/001-client-fake.ts --port ${proxyPort} -n 3  (pid ${clientPid})`);
  expect(lines).toContain(`client| fake client: done with 127.0.0.1:${proxyPort}`);
  // Stopped last started first, each with SIGINT (the client had already exited).
  expect(lines.slice(-3)).toEqual([
    `> client (pid ${clientPid}) exited with code 0`,
    `> proxy (pid ${proxyPid}) exited with code 0`,
    `> echo (pid ${echoPid}) exited with code 0`,
  ]);
  expect(report.pids.filter(isAlive)).toEqual([]);
});

test("Ctrl-C in the middle of the demo: every process it started is stopped, none is left", async () => {
  using tree = new TempTree({
    "tcp_echo_server/003-loop.ts": { from: "tcp_echo_server/003-loop.ts" },
    "test/001-client-hang.ts": { from: "menu/fixtures/hanging-client.ts" },
  });
  const catalogue = loadCatalogue(tree.root);
  const interrupt = new AbortController();
  const lines: string[] = [];
  const pids: number[] = [];
  const bound = setTimeout(() => interrupt.abort(), 15_000); // only if the client never connects: the test then fails
  const report = await runDemo(
    catalogue,
    {
      echo: stage(catalogue, "tcp_echo_server/003-loop.ts"),
      client: stage(catalogue, "test/001-client-hang.ts"),
      connections: 1,
    },
    {
      interrupted: interrupt.signal,
      graceMs: 1000,
      print: (line) => {
        lines.push(line);
        const started = /^> \w+: .*\(pid (\d+)\)$/.exec(line);
        if (started) pids.push(Number(started[1]));
        // The client is connected and will wait forever: press Ctrl-C, which signals the whole process group.
        if (line.startsWith("client| connected to")) {
          for (const pid of pids) process.kill(pid, "SIGINT");
          interrupt.abort();
        }
      },
      colour: false,
    },
  );
  clearTimeout(bound);
  expect(lines).toContain(
    `client| connected to 127.0.0.1:${/listening on 127\.0\.0\.1:(\d+)/.exec(lines.join("\n"))![1]}, waiting forever`,
  );
  expect(report).toMatchObject({ ok: false, interrupted: true, summary: "interrupted (Ctrl-C)" });
  expect(report.pids).toEqual(pids);
  expect(pids).toHaveLength(2);
  // The hanging client has no handler: it dies of SIGINT; 003 neither has one (004 adds it).
  expect(lines.slice(-2)).toEqual([
    `> client (pid ${pids[1]}) stopped by SIGINT`,
    `> echo (pid ${pids[0]}) stopped by SIGINT`,
  ]);
  await waitGone(pids, 100);
});

test("an echo stage that fails to start: the demo says why and leaves nothing behind", async () => {
  using tree = new TempTree({
    "tcp_echo_server/001-broken.ts": `/*\n * 001 - broken\n */\nconsole.error("boom");\nprocess.exit(1);\n`,
  });
  const catalogue = loadCatalogue(tree.root);
  const lines: string[] = [];
  const report = await runDemo(
    catalogue,
    { echo: stage(catalogue, "tcp_echo_server/001-broken.ts"), connections: 1 },
    {
      interrupted: never,
      print: (line) => lines.push(line),
      colour: false,
    },
  );
  expect(report).toMatchObject({ ok: false, interrupted: false, summary: "echo exited (code 1) before listening" });
  expect(lines).toContain("echo  | boom");
  expect(report.pids.filter(isAlive)).toEqual([]);
});

test("the built-in check reports a wrong reply and a refused connection", async () => {
  const wrong = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    socket: { data: (socket, data) => void socket.write(data) },
  });
  try {
    const result = await builtInCheck("127.0.0.1", wrong.port);
    expect(result.ok).toBe(false);
    expect(result.summary).toContain(`got ${JSON.stringify(CHECK_LINE)}`);
  } finally {
    wrong.stop(true);
  }
  const refused = await builtInCheck("127.0.0.1", wrong.port);
  expect(refused.ok).toBe(false);
  expect(refused.summary).toStartWith(`built-in check to 127.0.0.1:${wrong.port} failed: `);
});
