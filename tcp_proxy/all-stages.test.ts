// Every proxy stage against a real echo stage (tcp_echo_server/005, in its own process) as the upstream: what each
// stage claims keeps working in the stages after it. Heavier or stage-specific checks live beside each stage.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { allByteValues, decode, resetStorm, TestClient, upperAscii } from "../test/support/net.ts";
import { type Running, startStage } from "../test/support/process.ts";

const ECHO = "tcp_echo_server/005-bounded-concurrency.ts";

/** Proxy stages, and the first stage that handles half-close. */
const STAGES = [
  "tcp_proxy/001-naive-pipe.ts",
  "tcp_proxy/002-queues-and-backpressure.ts",
  "tcp_proxy/003-half-close-and-timeouts.ts",
  "tcp_proxy/004-limits-and-lifecycle.ts",
  "tcp_proxy/005-upstream-pool.ts",
  "tcp_proxy/006-observability-and-edges.ts",
  "tcp_proxy/007-fault-injection.ts",
  "tcp_proxy/011-fault-injection-api.ts",
  "tcp_proxy/012-proxies-at-run-time.ts",
  "tcp_proxy/013-toxiproxy-compatible.ts",
];
const HALF_CLOSE_FROM = 3;

let echo: Running;
beforeAll(async () => {
  echo = await startStage(ECHO, ["--port", "0"]);
});
afterAll(async () => {
  await echo[Symbol.asyncDispose]();
});

describe.each(STAGES.map((file, index) => [file, index + 1] as const))("%s", (file, number) => {
  test("a conversation, binary-safe, through echo 005", async () => {
    await using proxy = await startStage(file, ["--port", "0", "--upstream", `127.0.0.1:${echo.port}`]);
    const client = await TestClient.connect(proxy.port);
    try {
      // 001 drops bytes sent before its upstream is connected: say hello until the first echo comes back.
      for (let tries = 0; client.receivedLength === 0; tries++) {
        expect(tries).toBeLessThan(number === 1 ? 50 : 1);
        client.write("hello\n");
        await client.readAtLeast(6, 200).catch(() => {});
      }
      expect(decode(client.received.subarray(0, 6))).toBe("HELLO\n");
      const start = client.receivedLength;
      client.write(allByteValues());
      expect((await client.readAtLeast(start + 282)).subarray(start)).toEqual(upperAscii(allByteValues()));
    } finally {
      client.close();
    }
  });

  if (number >= HALF_CLOSE_FROM)
    test("printf 'hello' | nc -N gets HELLO", async () => {
      await using proxy = await startStage(file, ["--port", "0", "--upstream", `127.0.0.1:${echo.port}`]);
      const client = await TestClient.connect(proxy.port);
      client.write("hello");
      await client.shutdown();
      expect(decode(await client.readToEnd(3000))).toBe("HELLO");
    });

  if (number >= 2)
    test("300 clients that reset at once, many before the accept completes: the proxy stays up", async () => {
      await using proxy = await startStage(file, ["--port", "0", "--upstream", `127.0.0.1:${echo.port}`]);
      await resetStorm(proxy.port, 300);
      const client = await TestClient.connect(proxy.port);
      client.write("still there?\n");
      expect(decode(await client.readAtLeast(13, 3000))).toBe("STILL THERE?\n");
      client.close();
      expect(proxy.proc.exitCode).toBeNull();
    });

  test("upstream down: the client is closed promptly and the proxy keeps running", async () => {
    await using down = await startStage(ECHO, ["--port", "0"]);
    const port = down.port;
    await down.stop();
    await using proxy = await startStage(file, ["--port", "0", "--upstream", `127.0.0.1:${port}`]);
    for (let i = 0; i < 2; i++) {
      const client = await TestClient.connect(proxy.port);
      expect(await client.endsWithin(1000)).toBe(true);
    }
    expect(proxy.proc.exitCode).toBeNull();
  });
});
