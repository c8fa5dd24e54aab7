import { describe, expect, test } from "bun:test";
import { echoContractTests } from "../test/support/echo-contract.ts";
import { scrape } from "../test/support/echo-workers.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";
import { decode, TestClient } from "../test/support/net.ts";
import { runToExit, startStage } from "../test/support/process.ts";

const STAGE = "tcp_echo_server/015-behind-a-balancer.ts";
const PREVIOUS = "tcp_echo_server/014-ready-for-containers.ts";
// One worker, so that every connection's log line is in one process's order; a short drain for disposal.
const BASE = ["--host", "127.0.0.1", "--port", "0", "--workers", "1", "--drain-timeout", "2"];
const HEADER = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 5000\r\n";

/** The v2 (binary) form of a TCP4 header from `source`:`port` to 10.0.0.2:5000. */
function v2Header(source: number[], port: number): Uint8Array {
  const header = new Uint8Array(16 + 12);
  header.set([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00, 12]);
  header.set(source, 16);
  header.set([10, 0, 0, 2], 20);
  new DataView(header.buffer).setUint16(24, port);
  new DataView(header.buffer).setUint16(26, 5000);
  return header;
}

/** Sends `parts` (each its own write), then FIN, and reads to the end. */
async function talk(port: number, ...parts: Array<string | Uint8Array>): Promise<string> {
  const client = await TestClient.connect(port);
  for (const part of parts) client.write(part);
  await client.shutdown();
  return decode(await client.readToEnd(5000));
}

describe("015 behind a load balancer: the PROXY protocol", () => {
  // Without --accept-proxy it is 014: the contracts hold as they did.
  echoContractTests({ file: STAGE, args: BASE });
  hostileContractTests({
    file: STAGE,
    kind: "echo",
    args: BASE,
    acceptProxy: true,
    headerTimeoutFlag: "--idle-timeout",
  });

  test("014 (previous stage) echoes the balancer's header back to the client as if it were data", async () => {
    await using server = await startStage(PREVIOUS, BASE);
    expect(await talk(server.port, HEADER, "hello")).toBe(`${HEADER.toUpperCase()}HELLO`);
  });

  test("a v1 header: not echoed; the log names the client it carries, not the balancer", async () => {
    await using server = await startStage(STAGE, [...BASE, "--accept-proxy"]);
    expect(await talk(server.port, HEADER, "hello")).toBe("HELLO");
    await server.waitForLog(/serving 192\.168\.0\.1$/m);
    expect(server.stderr.text).not.toMatch(/serving 127\.0\.0\.1/);
  });

  test("a v2 header, and a header split across reads, with data in the same read as its end", async () => {
    await using server = await startStage(STAGE, [...BASE, "--accept-proxy"]);
    const header = v2Header([203, 0, 113, 7], 40000);
    const withData = new Uint8Array([...header.subarray(10), ...new TextEncoder().encode("two")]);
    expect(await talk(server.port, header.subarray(0, 10), withData)).toBe("TWO");
    await server.waitForLog(/serving 203\.0\.113\.7$/m);
  });

  test("--max-per-ip counts the address in the header: the balancer's own address is not one client", async () => {
    await using server = await startStage(STAGE, [...BASE, "--accept-proxy", "--max-per-ip", "1"]);
    const [first, second] = [await TestClient.connect(server.port), await TestClient.connect(server.port)];
    first.write("PROXY TCP4 192.168.0.1 10.0.0.2 1000 5000\r\none");
    second.write("PROXY TCP4 192.168.0.2 10.0.0.2 1000 5000\r\ntwo");
    expect(decode(await first.readAtLeast(3))).toBe("ONE");
    expect(decode(await second.readAtLeast(3))).toBe("TWO"); // two clients behind one balancer: both served
    expect(await talk(server.port, "PROXY TCP4 192.168.0.1 10.0.0.2 1001 5000\r\n", "again")).toBe("");
    await server.waitForLog(/refused 192\.168\.0\.1: 1 connections from this address, the limit \(--max-per-ip 1/);
    first.close();
    second.close();
  });

  test("no header, a malformed one, one cut by FIN, one too slow: closed, logged, counted", async () => {
    const args = [...BASE, "--accept-proxy", "--idle-timeout", "1", "--metrics-port", "0"];
    await using server = await startStage(STAGE, args);
    const [, metricsPort] = (await server.waitForLog(/metrics on http:\/\/127\.0\.0\.1:(\d+)\/metrics/))!;
    expect(await talk(server.port, "hello")).toBe("");
    await server.waitForLog(/closing: bad PROXY header: no PROXY header/);
    expect(await talk(server.port, "PROXY TCP4 999.0.0.1 10.0.0.2 1 2\r\nhi")).toBe("");
    await server.waitForLog(/closing: bad PROXY header: bad v1 address/);
    expect(await talk(server.port, "PROXY TCP4 192.168")).toBe("");
    await server.waitForLog(/closing: bad PROXY header: the stream ended before it was complete/);
    const slow = await TestClient.connect(server.port);
    slow.write("PROXY TCP4 ");
    const started = performance.now();
    expect((await slow.readToEnd(5000)).length).toBe(0);
    expect(performance.now() - started).toBeGreaterThan(900);
    await server.waitForLog(/closing: bad PROXY header: none within 1s/);
    const metrics = await scrape(`http://127.0.0.1:${metricsPort}/metrics`);
    expect(metrics.get('echo_connections_refused_total{reason="proxy-header"}')).toBe(4);
    expect(metrics.get("echo_connections_total")).toBe(0); // none of them was admitted
  });

  test("ACCEPT_PROXY=1 turns it on from the environment; a bad value is a usage error", async () => {
    await using server = await startStage(STAGE, BASE, { env: { ACCEPT_PROXY: "1" } });
    expect(await talk(server.port, HEADER, "env")).toBe("ENV");
    const bad = await runToExit(STAGE, BASE, { env: { ACCEPT_PROXY: "sometimes" } });
    expect(bad).toEqual({
      code: 2,
      stdout: "",
      stderr: 'error: ACCEPT_PROXY must be 1 or 0 (true or false), got "sometimes" (see --help)\n',
    });
    const help = await runToExit(STAGE, ["-h"]);
    expect(help.stdout).toMatch(/\n {2}--accept-proxy [^[]*\[ACCEPT_PROXY\]/);
  });
});
