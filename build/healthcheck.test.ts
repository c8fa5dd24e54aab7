// The health check the images run (`COMMAND --healthcheck`), in-process against real sockets: an echo server that
// answers right, wrongly, or not at all, and HTTP servers that answer 200, 404, 500 or never.
import { describe, expect, test } from "bun:test";
import { startEchoUpstream, unusedPort } from "../test/support/net.ts";
import { startStage } from "../test/support/process.ts";
import { check, healthcheckMain, targetFromEnvironment } from "./healthcheck.ts";

describe("HOST:PORT: one verified echo exchange", () => {
  test("an echo server that uppercases is healthy", async () => {
    await using upstream = startEchoUpstream();
    const result = await check(upstream.address);
    expect(result.healthy).toBe(true);
    expect(result.message).toMatch(/^127\.0\.0\.1:\d+ echoed \d+ bytes in \d+ ms$/);
  });

  test("a server that answers other bytes, closes early or stays silent is not", async () => {
    const wrong = Bun.listen({
      hostname: "127.0.0.1",
      port: 0,
      socket: { data: (socket, chunk) => void socket.write(chunk) }, // echoes without uppercasing
    });
    const closer = Bun.listen({
      hostname: "127.0.0.1",
      port: 0,
      socket: { open: (socket) => void socket.end(), data() {} },
    });
    const silent = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    try {
      expect((await check(`127.0.0.1:${wrong.port}`)).message).toMatch(/answered "healthcheck .*", not "HEALTHCHECK/);
      expect((await check(`127.0.0.1:${closer.port}`)).message).toMatch(/closed the connection before the whole echo/);
      const quiet = await check(`127.0.0.1:${silent.port}`, 300);
      expect(quiet).toEqual({
        healthy: false,
        message: `127.0.0.1:${silent.port}: no full echo within 300 ms (got 0 bytes)`,
      });
    } finally {
      for (const listener of [wrong, closer, silent]) listener.stop(true);
    }
  });

  test("ACCEPT_PROXY set: a PROXY v2 LOCAL header first, so an echo server that requires one answers", async () => {
    const args = ["--port", "0", "--workers", "1", "--accept-proxy"];
    await using server = await startStage("tcp_echo_server/015-behind-a-balancer.ts", args);
    const target = `127.0.0.1:${server.port}`;
    expect(await healthcheckMain([target], { ACCEPT_PROXY: "1" })).toBe(0);
    expect(await healthcheckMain([target], {})).toBe(1); // without the header the server closes: unhealthy
    await server.waitForLog(/closing: bad PROXY header: no PROXY header/);
  });

  test("nothing listening is unhealthy, with the reason", async () => {
    const port = unusedPort();
    expect(await check(`127.0.0.1:${port}`)).toEqual({ healthy: false, message: `127.0.0.1:${port}: ECONNREFUSED` });
  });
});

describe("http://HOST:PORT/PATH: one GET", () => {
  test("200 and 404 are healthy (the server answers), 500 is not, and so is no answer", async () => {
    using server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: async (request) => {
        const path = new URL(request.url).pathname;
        if (path === "/slow") await Bun.sleep(1000);
        return new Response(path, { status: path === "/version" ? 200 : path === "/broken" ? 500 : 404 });
      },
    });
    const url = (path: string): string => `http://127.0.0.1:${server.port}${path}`;
    expect(await check(url("/version"))).toMatchObject({
      healthy: true,
      message: expect.stringMatching(/answered 200/),
    });
    expect((await check(url("/toxics"))).healthy).toBe(true);
    expect(await check(url("/broken"))).toMatchObject({
      healthy: false,
      message: expect.stringMatching(/answered 500/),
    });
    expect(await check(url("/slow"), 200)).toEqual({
      healthy: false,
      message: `${url("/slow")}: no answer within 200 ms`,
    });
  });
});

describe("the target from the environment, and the command line", () => {
  test("HOST and PORT as the echo server reads them; a wildcard host is checked on loopback", () => {
    expect(targetFromEnvironment({})).toBe("127.0.0.1:5000");
    expect(targetFromEnvironment({ HOST: "0.0.0.0", PORT: "7000" })).toBe("127.0.0.1:7000");
    expect(targetFromEnvironment({ HOST: "::", PORT: "7000" })).toBe("[::1]:7000");
    expect(targetFromEnvironment({ HOST: "10.1.2.3", PORT: "" })).toBe("10.1.2.3:5000");
  });

  test("a target that is neither form, or two of them, is one line and exit 1 (Docker reserves 2)", async () => {
    const errors: string[] = [];
    const original = console.error;
    console.error = (line: string) => void errors.push(line);
    try {
      expect(await healthcheckMain(["localhost"], {})).toBe(1);
      expect(await healthcheckMain(["a:1", "b:2"], {})).toBe(1);
    } finally {
      console.error = original;
    }
    expect(errors).toEqual([
      'unhealthy: --healthcheck takes HOST:PORT or http://HOST:PORT/PATH, got "localhost"',
      "unhealthy: --healthcheck takes at most one target: HOST:PORT or http://HOST:PORT/PATH",
    ]);
  });
});
