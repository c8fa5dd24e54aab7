// What a proxy stage keeps promising once it has learnt it, registered as tests for every proxy stage by
// tcp_proxy/all-stages.test.ts and for the compiled proxy by build/build.test.ts: a binary-safe conversation
// through it, a half-close passed on (004 on), 300 clients resetting at once survived (002 on), and a client
// closed promptly when the upstream is down.

import { afterAll, beforeAll, expect, test } from "bun:test";
import type { StageLaunch } from "./echo-contract.ts";
import { allByteValues, decode, resetStorm, TestClient, upperAscii } from "./net.ts";
import { type Running, startStage } from "./process.ts";

export interface ProxyContract {
  /** The proxy; `--port 0 --upstream 127.0.0.1:PORT` are added to its arguments. */
  proxy: StageLaunch;
  /** An echo server for it to forward to, started once for these tests (with its own `--port 0`). */
  upstream: StageLaunch;
  halfClose: boolean;
  survivesResetStorm: boolean;
  /** 001 and 002 drop bytes sent before their upstream connection is open: say hello until an echo comes back. */
  dropsEarlyBytes?: boolean;
}

export function proxyContractTests({
  proxy,
  upstream,
  halfClose,
  survivesResetStorm,
  dropsEarlyBytes = false,
}: ProxyContract): void {
  const startUpstream = (): Promise<Running> => startStage(upstream.file, upstream.args, upstream.options);
  const startProxy = (upstreamPort: number): Promise<Running> =>
    startStage(
      proxy.file,
      [...(proxy.args ?? []), "--port", "0", "--upstream", `127.0.0.1:${upstreamPort}`],
      proxy.options,
    );

  /** Says hello until the echo comes back (once, unless early bytes are dropped); returns the bytes received. */
  const greet = async (client: TestClient): Promise<number> => {
    for (let tries = 0; client.receivedLength === 0; tries++) {
      expect(tries).toBeLessThan(dropsEarlyBytes ? 50 : 1);
      client.write("hello\n");
      await client.readAtLeast(6, dropsEarlyBytes ? 200 : 3000).catch(() => {});
    }
    expect(decode(client.received.subarray(0, 6))).toBe("HELLO\n");
    return client.receivedLength;
  };

  let echo: Running;
  beforeAll(async () => {
    echo = await startUpstream();
  });
  afterAll(async () => {
    await echo[Symbol.asyncDispose]();
  });

  test("a conversation, binary-safe, through the echo server", async () => {
    await using server = await startProxy(echo.port);
    const client = await TestClient.connect(server.port);
    try {
      const start = await greet(client);
      client.write(allByteValues());
      expect((await client.readAtLeast(start + 282)).subarray(start)).toEqual(upperAscii(allByteValues()));
    } finally {
      client.close();
    }
  });

  if (halfClose)
    test("printf 'hello' | nc -N gets HELLO", async () => {
      await using server = await startProxy(echo.port);
      const client = await TestClient.connect(server.port);
      client.write("hello");
      await client.shutdown();
      expect(decode(await client.readToEnd(3000))).toBe("HELLO");
    });

  if (survivesResetStorm)
    test("300 clients that reset at once, many before the accept completes: the proxy stays up", async () => {
      await using server = await startProxy(echo.port);
      await resetStorm(server.port, 300);
      const client = await TestClient.connect(server.port);
      const start = await greet(client);
      client.write("still there?\n");
      expect(decode((await client.readAtLeast(start + 13, 3000)).subarray(start))).toBe("STILL THERE?\n");
      client.close();
      expect(server.proc.exitCode).toBeNull();
    });

  test("upstream down: the client is closed promptly and the proxy keeps running", async () => {
    await using down = await startUpstream();
    const port = down.port;
    await down.stop();
    await using server = await startProxy(port);
    for (let i = 0; i < 2; i++) {
      const client = await TestClient.connect(server.port);
      expect(await client.endsWithin(1000)).toBe(true);
    }
    expect(server.proc.exitCode).toBeNull();
  });
}
