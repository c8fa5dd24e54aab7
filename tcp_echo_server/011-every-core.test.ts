import { describe, expect, test } from "bun:test";
import { echoContractTests } from "../test/support/echo-contract.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";
import { hardenedEchoTests } from "../test/support/echo-hardened.ts";
import { workerPids } from "../test/support/echo-workers.ts";
import { connectMany, decode, exchange } from "../test/support/net.ts";
import { descendants, isAlive, runToExit, startStage, waitGone } from "../test/support/process.ts";

const STAGE = "tcp_echo_server/011-every-core.ts";
// A short drain: disposal SIGKILLs the supervisor, and its orphaned workers drain their clients before they exit.
const BASE = ["--host", "127.0.0.1", "--port", "0", "--drain-timeout", "2"];

describe("011 every core", () => {
  test("the supervisor prints one listening line once every worker listens on the shared port", async () => {
    await using server = await startStage(STAGE, [...BASE, "--workers", "3"]);
    expect(server.stdout.text).toBe(`listening on 127.0.0.1:${server.port}\n`);
    const listening = [
      ...server.stderr.text.matchAll(/\[worker (\d) \| active 0\/3334\] listening on 127\.0\.0\.1:(\d+)/g),
    ];
    expect(listening.map(([, index]) => index).sort()).toEqual(["0", "1", "2"]);
    for (const [, , port] of listening) expect(Number(port)).toBe(server.port);
    expect(descendants(server.pid).length).toBe(3); // the supervisor's three workers
  });

  test("a port this stage serves already: a second copy says so in one line, exits 1, does not join", async () => {
    // The workers share their port with SO_REUSEPORT, which would let a second copy's workers join them.
    await using first = await startStage(STAGE, [...BASE, "--workers", "2"]);
    const second = await runToExit(STAGE, ["--host", "127.0.0.1", "--port", String(first.port), "--workers", "2"]);
    expect(second).toEqual({
      code: 1,
      stdout: "",
      stderr: `error: cannot listen on 127.0.0.1:${first.port}: address already in use\n`,
    });
    expect(descendants(first.pid).length).toBe(2); // the first is untouched
    expect(decode(await exchange(first.port, "still mine", { halfClose: true }))).toBe("STILL MINE");
  });

  test("-h lists --workers; a bad count is a usage error", async () => {
    const help = await runToExit(STAGE, ["-h"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toStartWith(`Usage: bun ${STAGE} [options]`);
    expect(help.stdout).toMatch(
      /\n {2}--workers N +worker processes \(default: the CPUs this process may use, here \d+\)/,
    );
    expect(await runToExit(STAGE, ["--workers", "0"])).toEqual({
      code: 2,
      stdout: "",
      stderr: 'error: --workers must be an integer from 1 to 1024, got "0" (see --help)\n',
    });
  });

  test("a port in use: one line, exit 1, no worker left behind", async () => {
    await using first = await startStage("tcp_echo_server/010-speed.ts", ["--port", "0"]);
    const { code, stdout, stderr } = await runToExit(STAGE, [...BASE.slice(0, 2), "--port", `${first.port}`]);
    expect({ code, stdout }).toEqual({ code: 1, stdout: "" });
    expect(stderr.trimEnd().split("\n").at(-1)).toBe(
      `error: cannot listen on 127.0.0.1:${first.port}: address already in use`,
    );
  });

  echoContractTests({ file: STAGE, args: [...BASE, "--workers", "2"] });

  hostileContractTests({ file: STAGE, kind: "echo", args: [...BASE, "--workers", "2"] });

  // The lesson: the kernel hands the connections of one port to several processes.
  test("connections are spread over the workers: each one serves some", async () => {
    await using server = await startStage(STAGE, [...BASE, "--workers", "2"]);
    const clients = await connectMany(server.port, 40, { greeting: "hello" });
    expect(clients.every((client) => decode(client.received) === "HELLO")).toBe(true);
    const servedBy = [...server.stderr.text.matchAll(/\[worker (\d) conn \d+ \| active \d+\/\d+\] serving/g)].map(
      ([, worker]) => worker,
    );
    expect(servedBy.length).toBe(40);
    expect(new Set(servedBy)).toEqual(new Set(["0", "1"]));
    for (const client of clients) client.reset();
  });

  test("a worker that dies is replaced, and new connections are served", async () => {
    await using server = await startStage(STAGE, [...BASE, "--workers", "2"]);
    const before = workerPids(server);
    const survivors = await connectMany(server.port, 20, { greeting: "before " });
    const victim = before.get(1)!;
    process.kill(victim, "SIGKILL");
    await server.waitForLog(new RegExp(`worker 1 \\(pid ${victim}\\) killed by SIGKILL: replacing it`));
    await server.waitForLog(/worker 1 \(pid \d+\) is back: 2 worker\(s\) listening/);
    const replacement = workerPids(server).get(1)!;
    expect(replacement).not.toBe(victim);
    expect(isAlive(replacement)).toBe(true);
    // Connections on the other worker carry on; new ones are served, by both workers again.
    for (const client of survivors.filter((c) => !c.peerEnded)) {
      client.write("after");
      expect(decode(await client.readAtLeast("before after".length))).toBe("BEFORE AFTER");
    }
    const fresh = await connectMany(server.port, 50, { greeting: "fresh" });
    expect(fresh.every((client) => decode(client.received) === "FRESH")).toBe(true);
    for (const client of [...survivors, ...fresh]) client.reset();
  });

  test("SIGTERM stops every worker (drained, exit 0); killing the supervisor leaves no worker serving", async () => {
    await using server = await startStage(STAGE, [...BASE, "--workers", "2"]);
    const pids = [...workerPids(server).values()];
    expect(await server.stop("SIGTERM")).toBe(0);
    await server.waitForLog(/shutdown complete: 0 client\(s\) drained, 0 cut across 2 worker\(s\)/);
    for (const pid of pids) expect(isAlive(pid)).toBe(false);

    await using orphaned = await startStage(STAGE, [...BASE, "--workers", "2"]);
    const orphans = [...workerPids(orphaned).values()];
    orphaned.proc.kill("SIGKILL");
    await orphaned.exited;
    await waitGone(orphans); // they noticed the IPC channel close and drained
  });

  // --max-clients is shared out between the workers and the kernel spreads connections evenly, not exactly: room
  // for 10,000 with two workers takes a little more than 10,000 (see the stage's Lacks).
  hardenedEchoTests({
    file: STAGE,
    args: [...BASE.slice(0, 2), ...BASE.slice(4), "--workers", "2", "--max-clients", "12000"],
    exactLimitArgs: ["--workers", "1"],
  });
});
