import { beforeAll, describe, expect, test } from "bun:test";
import {
  Blackhole,
  decode,
  earlyBytesKept,
  echoTransfer,
  randomBytes,
  startEchoUpstream,
  TestClient,
} from "../test/support/net.ts";
import { startStage } from "../test/support/process.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";

// What 003 adds: nothing lost. 002-logger-class-cli.test.ts shows 002 losing bytes in these same two scenarios
// (earlyBytesKept, and a big transfer), so each test here would fail without the queues.
const STAGE = "tcp_proxy/003-queues-and-backpressure.ts";
const MiB = 1024 * 1024;

let big: Uint8Array;
beforeAll(() => {
  big = randomBytes(64 * MiB);
});

describe("003 queues and backpressure", () => {
  test("bytes sent before the upstream is connected are kept, in order (002 loses them)", async () => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, ["--port", "0", "--upstream", upstream.address]);
    for (let i = 0; i < 10; i++) expect(await earlyBytesKept(proxy.port, upstream)).toBe(true);
  });

  test("early bytes are bounded: with the upstream still connecting, the proxy stops reading the client", async () => {
    await using blackhole = await Blackhole.open(); // its connects hang: the upstream never opens
    await blackhole.fill();
    await using proxy = await startStage(STAGE, ["--port", "0", "--upstream", `127.0.0.1:${blackhole.port}`]);
    const client = await TestClient.connect(proxy.port);
    try {
      client.write(big);
      // No event says "the proxy stopped reading": wait until the client's unsent bytes stop shrinking.
      let unsent = -1;
      for (let polls = 0; polls < 30 && client.unsent !== unsent; polls++) {
        unsent = client.unsent;
        await Bun.sleep(200);
      }
      // 256 KiB queued, a read or two in flight and the kernel's socket buffers: far from the 64 MiB written.
      expect(client.unsent).toBeGreaterThan(32 * MiB);
      const status = await Bun.file(`/proc/${proxy.pid}/status`).text();
      expect(Number(status.match(/VmRSS:\s+(\d+)/)![1]) * 1024).toBeLessThan(80 * MiB); // ~40 MiB is Bun itself
    } finally {
      client.close();
    }
  });

  test("64 MiB of random bytes arrive intact both ways (002 truncates them)", async () => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, ["--port", "0", "--upstream", upstream.address]);
    const result = await echoTransfer(proxy.port, big);
    expect(result).toMatchObject({ intact: true, received: big.length });
    console.log(`003: 64 MiB echoed through the proxy in ${result.seconds.toFixed(2)} s`);
  });

  test("a slow reader slows the writer: the proxy stops reading instead of queueing everything", async () => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, [
      "--port",
      "0",
      "--upstream",
      upstream.address,
      "--log-level",
      "debug",
    ]);
    const client = await TestClient.connect(proxy.port);
    try {
      // The client writes but its socket is not read from (paused): the echo piles up, and the proxy must stop.
      client.pauseReading();
      client.write(big.subarray(0, 48 * MiB));
      await proxy.waitForLog(/client is slow, \d+ bytes queued/);
      await Bun.sleep(300); // let whatever is in flight settle
      const queued = [...proxy.stderr.text.matchAll(/client is slow, (\d+) bytes queued/g)].map((m) => Number(m[1]));
      expect(Math.max(...queued)).toBeLessThan(1 * MiB); // a chunk or two, not the 48 MiB the client is pushing
      const status = await Bun.file(`/proc/${proxy.pid}/status`).text();
      expect(Number(status.match(/VmRSS:\s+(\d+)/)![1]) * 1024).toBeLessThan(80 * MiB); // ~40 MiB is Bun itself
      client.resumeReading();
      await client.readAtLeast(48 * MiB, 20_000);
    } finally {
      client.close();
    }
  });

  test("many clients at once each get their own bytes back", async () => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, ["--port", "0", "--upstream", upstream.address]);
    const replies = await Promise.all(
      Array.from({ length: 50 }, async (_, i) => {
        const client = await TestClient.connect(proxy.port);
        try {
          const message = `client ${i} `.repeat(100);
          client.write(message);
          return decode(await client.readAtLeast(message.length)) === message.toUpperCase();
        } finally {
          client.close();
        }
      }),
    );
    expect(replies.every(Boolean)).toBe(true);
  });
});

// No half-close yet (004): a client's FIN closes its connection and the reply still on its way is lost.
hostileContractTests({ file: STAGE, kind: "proxy", args: ["--port", "0"], halfClose: "loses" });
