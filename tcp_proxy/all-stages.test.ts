// Every proxy stage against a real echo stage (tcp_echo_server/005, in its own process) as the upstream: what each
// stage claims keeps working in the stages after it. Heavier or stage-specific checks live beside each stage.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { allByteValues, decode, peerStopsTaking, TestClient, upperAscii } from "../test/support/net.ts";
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

  // A client that floods, stops reading and leaves, in front of an upstream that stops reading too: what the proxy
  // still holds for the upstream cannot wait forever. (Before 003 there is no timeout to bound it.)
  if (number >= HALF_CLOSE_FROM)
    test("an upstream that takes nothing more cannot hold a connection whose client has gone", async () => {
      let upstreamOpen = 0;
      const deaf = Bun.listen({
        hostname: "127.0.0.1",
        port: 0,
        socket: {
          open(socket) {
            upstreamOpen++;
            socket.pause(); // never reads: the proxy's bytes pile up in the kernel, then in the proxy
          },
          close() {
            upstreamOpen--;
          },
          data() {},
        },
      });
      try {
        const args = ["--port", "0", "--upstream", `127.0.0.1:${deaf.port}`, "--idle-timeout", "1"];
        await using proxy = await startStage(file, args);
        const client = await TestClient.connect(proxy.port);
        client.write(new Uint8Array(32 * 1024 * 1024));
        await peerStopsTaking(client);
        client.reset();
        await proxy.waitForLog(/upstream did not take the last \d+ bytes in time: cut/, 10_000);
        for (let i = 0; upstreamOpen > 0; i++) {
          expect(i).toBeLessThan(100);
          await Bun.sleep(50); // the upstream's close is the end of it; no event reaches the test sooner
        }
      } finally {
        deaf.stop(true);
      }
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
