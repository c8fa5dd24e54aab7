import { beforeAll, describe, expect, test } from "bun:test";
import type { Socket } from "bun";
import { Blackhole, decode, echoTransfer, randomBytes, startEchoUpstream, TestClient } from "../test/support/net.ts";
import { runToExit, startStage } from "../test/support/process.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";

const STAGE = "tcp_proxy/004-half-close-and-timeouts.ts";
const PREVIOUS = "tcp_proxy/003-queues-and-backpressure.ts";
const MiB = 1024 * 1024;

/** `printf 'hello' | nc -N 127.0.0.1 PORT`: send, FIN, read until the server closes. */
async function sendAndFinish(port: number, message: string): Promise<{ reply: string; ended: boolean }> {
  const client = await TestClient.connect(port);
  try {
    client.write(message);
    await client.shutdown();
    await client.readToEnd(3000);
    return { reply: decode(client.received), ended: client.peerEnded };
  } finally {
    client.close();
  }
}

/**
 * An upstream that speaks first and finishes at once ("banner", then FIN) but keeps reading, counting what it
 * gets: the mirror image of `nc -N`, to show the proxy passing the upstream's FIN on while the client goes on.
 */
function startBannerUpstream() {
  const closed = Promise.withResolvers<void>();
  const state = { received: 0, closed: closed.promise };
  const listener = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    allowHalfOpen: true,
    socket: {
      open(socket: Socket) {
        socket.write("banner\n");
        socket.shutdown();
      },
      data(_socket, chunk) {
        state.received += chunk.length;
      },
      close() {
        closed.resolve(); // the proxy's FIN: Bun reports it as close, as this side had already sent its own
      },
    },
  });
  return { port: listener.port, state, [Symbol.dispose]: () => listener.stop(true) };
}

describe("004 half-close", () => {
  test("printf 'hello' | nc -N through the proxy gets HELLO (003 loses it)", async () => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, [
      "--port",
      "0",
      "--upstream",
      upstream.address,
      "--log-level",
      "debug",
    ]);
    expect(await sendAndFinish(proxy.port, "hello")).toEqual({ reply: "HELLO", ended: true });
    await proxy.waitForLog(/closed \(both sides finished\)/);

    await using previous = await startStage(PREVIOUS, ["--port", "0", "--upstream", upstream.address]);
    expect(await sendAndFinish(previous.port, "hello")).toEqual({ reply: "", ended: true });
  });

  test("64 MiB then FIN: every byte comes back, then the FIN", async () => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, ["--port", "0", "--upstream", upstream.address]);
    const data = randomBytes(64 * MiB);
    const result = await echoTransfer(proxy.port, data, { halfClose: true });
    expect(result).toMatchObject({ intact: true, ended: true, received: data.length });
    console.log(`004: 64 MiB + FIN echoed through the proxy in ${result.seconds.toFixed(2)} s`);
  });

  test("the upstream's FIN reaches the client while the client keeps sending", async () => {
    using upstream = startBannerUpstream();
    await using proxy = await startStage(STAGE, ["--port", "0", "--upstream", `127.0.0.1:${upstream.port}`]);
    const client = await TestClient.connect(proxy.port);
    try {
      expect(decode(await client.readToEnd(3000))).toBe("banner\n"); // the upstream's FIN got through
      client.write("x".repeat(100_000)); // and the other direction still flows
      await client.shutdown();
      await upstream.state.closed;
      await proxy.waitForLog(/closed \(both sides finished\)/);
      expect(upstream.state.received).toBe(100_000);
    } finally {
      client.close();
    }
  });

  test("a client reset closes the upstream connection too", async () => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, ["--port", "0", "--upstream", upstream.address]);
    const client = await TestClient.connect(proxy.port);
    client.write("hello");
    await client.readAtLeast(5);
    expect(upstream.active).toBe(1);
    client.reset();
    await upstream.until(() => upstream.active === 0, 3000, "the proxy to close its upstream connection");
    await proxy.waitForLog(/closed \(client connection failed/);
  });
});

describe("004 timeouts", () => {
  test("an upstream that never answers the SYN: the client is closed after --connect-timeout (003 waits)", async () => {
    await using hole = await Blackhole.open();
    await hole.fill();
    const upstream = `127.0.0.1:${hole.port}`;
    await using proxy = await startStage(STAGE, ["--port", "0", "--upstream", upstream, "--connect-timeout", "0.3"]);
    const client = await TestClient.connect(proxy.port);
    const started = performance.now();
    expect(await client.endsWithin(3000)).toBe(true);
    const elapsed = performance.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(250);
    expect(elapsed).toBeLessThan(1500);
    await proxy.waitForLog(/closed \(upstream connect timed out after 0\.3s\)/);

    await using previous = await startStage(PREVIOUS, ["--port", "0", "--upstream", upstream]);
    const waiting = await TestClient.connect(previous.port);
    expect(await waiting.endsWithin(1000)).toBe(false);
    waiting.close();
  });

  test("--idle-timeout closes a silent connection, and traffic keeps it open", async () => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, [
      "--port",
      "0",
      "--upstream",
      upstream.address,
      "--idle-timeout",
      "0.6",
    ]);
    const client = await TestClient.connect(proxy.port);
    try {
      for (let i = 1; i <= 6; i++) {
        // 6 x 150 ms = 900 ms of life, more than the idle timeout, because every message resets it
        client.write("ping");
        await client.readAtLeast(4 * i);
        await Bun.sleep(150);
        expect(client.peerEnded).toBe(false);
      }
      const silentSince = performance.now();
      expect(await client.endsWithin(2000)).toBe(true);
      const silentFor = performance.now() - silentSince;
      expect(silentFor).toBeGreaterThanOrEqual(400); // 600 ms after the last byte, of which 150 ms already slept
      expect(silentFor).toBeLessThan(1500);
      await proxy.waitForLog(/closed \(idle for 0\.6s\)/);
    } finally {
      client.close();
    }
  });

  test.each([
    [["--connect-timeout", "0"], /--connect-timeout must be a number of seconds above 0/],
    [["--idle-timeout", "soon"], /--idle-timeout must be a number of seconds from 0/],
  ])("usage error %p", async (args, message) => {
    const { code, stderr } = await runToExit(STAGE, args);
    expect(code).toBe(2);
    expect(stderr).toMatch(message);
  });
});

hostileContractTests({ file: STAGE, kind: "proxy", args: ["--port", "0"] });
