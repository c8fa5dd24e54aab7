import { describe, expect, test } from "bun:test";
import { echoContractTests } from "../test/support/echo-contract.ts";
import { parsePrometheus } from "../test/support/echo-workers.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";
import { decode, TestClient } from "../test/support/net.ts";
import { runToExit, startStage } from "../test/support/process.ts";

const STAGE = "tcp_echo_server/013-metrics-endpoint.ts";
const PREVIOUS = "tcp_echo_server/012-metrics.ts";
// A short drain: disposal SIGKILLs the supervisor, and its orphaned workers drain their clients before they exit.
const BASE = ["--host", "127.0.0.1", "--port", "0", "--drain-timeout", "2"];

/** Sends `request` to the metrics port, then FIN at once (as `nc -N` does), and reads until the server closes. */
async function ask(port: number, request: string): Promise<string> {
  const client = await TestClient.connect(port);
  client.write(request);
  await client.shutdown();
  return decode(await client.readToEnd(5000));
}

describe("013 a metrics endpoint any client can read", () => {
  echoContractTests({ file: STAGE, args: [...BASE, "--workers", "2"] });
  hostileContractTests({ file: STAGE, kind: "echo", args: [...BASE, "--workers", "2"] });

  test("012 (previous stage): a request followed at once by FIN gets nothing back", async () => {
    await using server = await startStage(PREVIOUS, [...BASE, "--workers", "1", "--metrics-port", "0"]);
    const [, port] = (await server.waitForLog(/metrics on http:\/\/127\.0\.0\.1:(\d+)\/metrics/))!;
    expect(await ask(Number(port), "GET /metrics HTTP/1.1\r\nHost: here\r\n\r\n")).toBe("");
    expect(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()).toContain("echo_workers 1\n"); // no FIN
  });

  test("metrics listen on 127.0.0.1 whatever --host is; --metrics-host opens them wider", async () => {
    // 127.0.0.2 is loopback too, but only a socket bound to 0.0.0.0 (or to it) answers there.
    const reachableOn127002 = async (port: number): Promise<boolean> =>
      TestClient.connect(port, "127.0.0.2").then(
        (client) => (client.close(), true),
        () => false,
      );
    const wide = ["--host", "0.0.0.0", "--port", "0", "--workers", "1", "--metrics-port", "0"];
    await using server = await startStage(STAGE, wide);
    const [, port] = (await server.waitForLog(/metrics on http:\/\/127\.0\.0\.1:(\d+)\/metrics/))!;
    expect(await reachableOn127002(server.port)).toBe(true); // the echo follows --host
    expect(await reachableOn127002(Number(port))).toBe(false); // the metrics do not
    await using opened = await startStage(STAGE, [...wide, "--metrics-host", "0.0.0.0"]);
    const [, openPort] = (await opened.waitForLog(/metrics on http:\/\/0\.0\.0\.0:(\d+)\/metrics/))!;
    expect(await reachableOn127002(Number(openPort))).toBe(true);
    const empty = await runToExit(STAGE, ["--metrics-host", ""]);
    expect([empty.code, empty.stderr]).toEqual([2, "error: --metrics-host must not be empty (see --help)\n"]);
  });

  test("the metrics endpoint answers a client that half-closes after its request (printf ... | nc -N)", async () => {
    await using server = await startStage(STAGE, [...BASE, "--workers", "2", "--metrics-port", "0"]);
    const [, port] = (await server.waitForLog(/metrics on http:\/\/127\.0\.0\.1:(\d+)\/metrics/))!;
    const metrics = Number(port);
    const reply = await ask(metrics, "GET /metrics HTTP/1.0\r\n\r\n");
    expect(reply).toStartWith("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n");
    const body = reply.slice(reply.indexOf("\r\n\r\n") + 4);
    expect(reply).toContain(`\r\nContent-Length: ${Buffer.byteLength(body)}\r\n`);
    expect(parsePrometheus(body).get("echo_workers")).toBe(2);
    // What else a scraper, a browser or a scanner may send: one status line each, then the connection closes.
    expect(await ask(metrics, "GET /metrics?x=1 HTTP/1.1\r\nHost: here\r\n\r\n")).toStartWith("HTTP/1.1 200 OK\r\n");
    expect(await ask(metrics, "GET / HTTP/1.1\r\n\r\n")).toEndWith("\r\n\r\nsee /metrics\n");
    expect(await ask(metrics, "POST /metrics HTTP/1.1\r\n\r\n")).toStartWith("HTTP/1.1 405 Method Not Allowed\r\n");
    expect(await ask(metrics, "hello\r\n\r\n")).toStartWith("HTTP/1.1 400 Bad Request\r\n");
    expect(await ask(metrics, `GET /${"x".repeat(10_000)}`)).toStartWith("HTTP/1.1 431 ");
    expect(await ask(metrics, "GET /metr")).toBe(""); // FIN before the request is whole: nothing to answer
    const nc = Bun.which("nc");
    if (nc) {
      const piped = Bun.spawn([nc, "-N", "127.0.0.1", port!], {
        stdin: new Blob(["GET /metrics HTTP/1.0\r\n\r\n"]),
        stdout: "pipe",
      });
      expect(await new Response(piped.stdout).text()).toContain("\necho_connections_total 0\n");
      expect(await piped.exited).toBe(0);
    }
  });
});
