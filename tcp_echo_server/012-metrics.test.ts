import { describe, expect, test } from "bun:test";
import { echoContractTests } from "../test/support/echo-contract.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";
import { hardenedEchoTests, waitForCount } from "../test/support/echo-hardened.ts";
import { scrape, workerPids } from "../test/support/echo-workers.ts";
import { connectMany, exchange, TestClient } from "../test/support/net.ts";
import { runToExit, startStage } from "../test/support/process.ts";

const STAGE = "tcp_echo_server/012-metrics.ts";
// A short drain: disposal SIGKILLs the supervisor, and its orphaned workers drain their clients before they exit.
const BASE = ["--host", "127.0.0.1", "--port", "0", "--drain-timeout", "2"];

describe("012 metrics", () => {
  test("-h lists --metrics-port; a bad port is a usage error; a port in use is one line and exit 1", async () => {
    const help = await runToExit(STAGE, ["-h"]);
    expect([help.code, help.stdout]).toEqual([0, expect.stringContaining("--metrics-port PORT")]);
    expect(await runToExit(STAGE, ["--metrics-port", "http"])).toEqual({
      code: 2,
      stdout: "",
      stderr: 'error: --metrics-port must be an integer from 0 to 65535, got "http" (see --help)\n',
    });
    await using taken = await startStage("tcp_echo_server/010-speed.ts", ["--port", "0"]);
    const busy = await runToExit(STAGE, [...BASE, "--workers", "1", "--metrics-port", String(taken.port)]);
    expect({ code: busy.code, stdout: busy.stdout }).toEqual({ code: 1, stdout: "" });
    expect(busy.stderr.trimEnd().split("\n").at(-1)).toBe(
      `error: cannot serve metrics on 127.0.0.1:${taken.port}: address already in use`,
    );
  });

  test("a metrics port another copy serves is busy too (development: false would share it silently)", async () => {
    await using first = await startStage(STAGE, [...BASE, "--workers", "1", "--metrics-port", "0"]);
    const [, port] = (await first.waitForLog(/metrics on http:\/\/127\.0\.0\.1:(\d+)\/metrics/))!;
    const second = await runToExit(STAGE, [...BASE, "--workers", "1", "--metrics-port", port!]);
    expect(second.code).toBe(1);
    expect(second.stderr.trimEnd().split("\n").at(-1)).toBe(
      `error: cannot serve metrics on 127.0.0.1:${port}: address already in use`,
    );
  });

  echoContractTests({ file: STAGE, args: [...BASE, "--workers", "2"] });

  hostileContractTests({ file: STAGE, kind: "echo", args: [...BASE, "--workers", "2"] });

  test("metrics: valid Prometheus text whose counters match what the clients did", async () => {
    await using server = await startStage(STAGE, [...BASE, "--workers", "2", "--metrics-port", "0"]);
    const [, url] = (await server.waitForLog(/metrics on (http:\/\/127\.0\.0\.1:\d+\/metrics)/))!;
    const empty = await scrape(url!);
    expect(empty.get("echo_connections_total")).toBe(0);
    expect(empty.get("echo_workers")).toBe(2);

    // 20 clients, client i sends i+1 bytes and leaves; 5 more stay connected; one resets (an error).
    let bytes = 0;
    for (let i = 0; i < 20; i++) {
      bytes += i + 1;
      await exchange(server.port, "x".repeat(i + 1));
    }
    const staying = await connectMany(server.port, 5, { greeting: "stay" });
    bytes += 5 * 4;
    const rude = await TestClient.connect(server.port);
    rude.write("bye");
    await rude.readAtLeast(3);
    bytes += 3;
    rude.reset();
    await server.waitForLog(/connection failed/);
    await waitForCount(server, /done: received/, 21); // the 20 that left and the rude one

    const metrics = await scrape(url!);
    expect(metrics.get("echo_connections_total")).toBe(26);
    expect(metrics.get("echo_connections_active")).toBe(5);
    expect(metrics.get("echo_received_bytes_total")).toBe(bytes);
    expect(metrics.get("echo_sent_bytes_total")).toBe(bytes);
    expect(metrics.get("echo_errors_total")).toBe(1);
    expect(metrics.get("echo_queued_bytes")).toBe(0);
    expect(metrics.get('echo_connections_refused_total{reason="max-clients"}')).toBe(0);
    // The per-worker series add up to the totals.
    for (const name of [
      "connections_total",
      "connections_active",
      "received_bytes_total",
      "sent_bytes_total",
      "errors_total",
    ]) {
      expect(
        (metrics.get(`echo_worker_${name}{worker="0"}`) ?? NaN) +
          (metrics.get(`echo_worker_${name}{worker="1"}`) ?? NaN),
      ).toBe(metrics.get(`echo_${name}`)!);
    }
    expect(await (await fetch(url!.replace("/metrics", "/"))).text()).toBe("see /metrics\n");
    for (const client of staying) client.reset();
  });

  test("metrics count refusals by limit, and a replaced worker does not take the totals with it", async () => {
    await using server = await startStage(STAGE, [
      ...BASE,
      "--workers",
      "1",
      "--metrics-port",
      "0",
      "--max-clients",
      "2",
    ]);
    const [, url] = (await server.waitForLog(/metrics on (http:\/\/127\.0\.0\.1:\d+\/metrics)/))!;
    const clients = await connectMany(server.port, 5);
    await waitForCount(server, /refused 127\.0\.0\.1/, 3);
    let metrics = await scrape(url!);
    expect(metrics.get('echo_connections_refused_total{reason="max-clients"}')).toBe(3);
    expect(metrics.get('echo_worker_connections_refused_total{worker="0",reason="max-clients"}')).toBe(3);
    expect(metrics.get("echo_connections_total")).toBe(2);

    const worker = workerPids(server).get(0)!;
    process.kill(worker, "SIGKILL");
    await server.waitForLog(/worker 0 \(pid \d+\) is back: 1 worker\(s\) listening/);
    metrics = await scrape(url!);
    expect(metrics.get("echo_worker_restarts_total")).toBe(1);
    expect(metrics.get('echo_connections_refused_total{reason="max-clients"}')).toBe(3); // carried over
    expect(metrics.get("echo_connections_total")).toBe(2);
    expect(metrics.get("echo_connections_active")).toBe(0); // the dead worker's clients are gone
    expect(metrics.get('echo_worker_connections_total{worker="0"}')).toBe(0); // the new worker starts at 0
    for (const client of clients) client.reset();
  });

  hardenedEchoTests({
    file: STAGE,
    args: [...BASE.slice(0, 2), ...BASE.slice(4), "--workers", "2", "--max-clients", "12000"],
    exactLimitArgs: ["--workers", "1"],
  });
});
