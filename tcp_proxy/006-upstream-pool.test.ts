import { describe, expect, test } from "bun:test";
import { Blackhole, decode, type EchoUpstream, startEchoUpstream, TestClient } from "../test/support/net.ts";
import { runToExit, startStage, type Running } from "../test/support/process.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";

const STAGE = "tcp_proxy/006-upstream-pool.ts";

function upstreamArgs(upstreams: EchoUpstream[]): string[] {
  return upstreams.flatMap((upstream) => ["--upstream", upstream.address]);
}

/** One short exchange through the proxy; true when the echo came back. */
async function served(proxy: Running, message = "ping"): Promise<boolean> {
  const client = await TestClient.connect(proxy.port);
  try {
    client.write(message);
    return decode(await client.readAtLeast(message.length, 3000)) === message.toUpperCase();
  } catch {
    return false;
  } finally {
    client.close();
  }
}

describe("006 balancing", () => {
  test("roundrobin: each upstream in turn", async () => {
    await using a = startEchoUpstream();
    await using b = startEchoUpstream();
    await using c = startEchoUpstream();
    await using proxy = await startStage(STAGE, ["--port", "0", ...upstreamArgs([a, b, c]), "--health-interval", "0"]);
    for (let i = 0; i < 6; i++) expect(await served(proxy)).toBe(true);
    expect([a.accepted, b.accepted, c.accepted]).toEqual([2, 2, 2]);
  });

  test.each(["leastconn", "random2"])("%s: new clients go where there are fewer connections", async (balance) => {
    await using a = startEchoUpstream();
    await using b = startEchoUpstream();
    await using proxy = await startStage(STAGE, [
      "--port",
      "0",
      ...upstreamArgs([a, b]),
      "--balance",
      balance,
      "--health-interval",
      "0",
    ]);
    const long = await TestClient.connect(proxy.port); // one long connection on one of them
    long.write("long");
    await long.readAtLeast(4);
    const [busy, idle] = a.active === 1 ? [a, b] : [b, a];
    for (let i = 0; i < 4; i++) {
      expect(await served(proxy)).toBe(true);
      await idle.until(() => idle.active === 0, 2000, "the short connection to end");
    }
    expect(idle.accepted).toBe(4); // roundrobin would have sent 2 of them to the busy one
    expect(busy.accepted).toBe(1);
    long.close();
  });
});

describe("006 failures", () => {
  test("a refused upstream is retried on the next one, then skipped (passive health)", async () => {
    await using a = startEchoUpstream();
    await using b = startEchoUpstream();
    await using proxy = await startStage(STAGE, [
      "--port",
      "0",
      ...upstreamArgs([a, b]),
      "--health-interval",
      "0",
      "--fail-timeout",
      "30",
    ]);
    a.stop();
    for (let i = 0; i < 4; i++) expect(await served(proxy)).toBe(true); // no client pays for the down one
    expect(b.accepted).toBe(4);
    const skipped = proxy.stderr.text.match(
      new RegExp(`upstream ${a.address} failed \\(connection refused\\), skipped for 30s`, "g"),
    );
    expect(skipped).toHaveLength(1); // tried once, then left alone
    expect(proxy.stderr.text).toMatch(new RegExp(`-> ${b.address} tries=2 .*closed_by=client`));
  });

  test("an upstream that does not answer: the try times out at --connect-timeout, the next one serves", async () => {
    await using hole = await Blackhole.open();
    await hole.fill();
    await using good = startEchoUpstream();
    await using proxy = await startStage(STAGE, [
      "--port",
      "0",
      "--upstream",
      `127.0.0.1:${hole.port}`,
      "--upstream",
      good.address,
      "--connect-timeout",
      "0.2",
      "--health-interval",
      "0",
    ]);
    const started = performance.now();
    expect(await served(proxy)).toBe(true);
    const elapsed = performance.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(150);
    expect(elapsed).toBeLessThan(1500);
    expect(proxy.stderr.text).toContain(`upstream 127.0.0.1:${hole.port} failed (connect timed out after 0.2s)`);
  });

  test("active checks: DOWN after --fall failures, UP again after --rise successes, traffic follows", async () => {
    await using a = startEchoUpstream();
    await using b = startEchoUpstream();
    await using proxy = await startStage(STAGE, [
      "--port",
      "0",
      ...upstreamArgs([a, b]),
      "--health-interval",
      "0.05",
      "--rise",
      "2",
      "--fall",
      "2",
      "--fail-timeout",
      "0",
    ]);
    a.stop();
    await proxy.waitForLog(new RegExp(`upstream ${a.address} is DOWN \\(2 failed checks: connection refused\\)`));
    const before = proxy.stderr.text.length;
    for (let i = 0; i < 4; i++) expect(await served(proxy)).toBe(true);
    expect(proxy.stderr.text.slice(before)).not.toContain(`${a.address} failed`); // not even tried: it is DOWN

    a.restart();
    await proxy.waitForLog(new RegExp(`upstream ${a.address} is UP \\(2 good checks in a row\\)`));
    const servedBefore = a.accepted;
    for (let i = 0; i < 4; i++) expect(await served(proxy)).toBe(true);
    expect(a.accepted - servedBefore).toBeGreaterThanOrEqual(2); // back in the rotation (plus health checks)
  });

  test("every upstream down: the client is closed at once, never left hanging", async () => {
    await using a = startEchoUpstream();
    await using b = startEchoUpstream();
    await using proxy = await startStage(STAGE, ["--port", "0", ...upstreamArgs([a, b]), "--health-interval", "0"]);
    a.stop();
    b.stop();
    for (const expected of ["no upstream left to try", "no upstream available"]) {
      const client = await TestClient.connect(proxy.port);
      const started = performance.now();
      client.write("hello?");
      expect(await client.endsWithin(1000)).toBe(true);
      expect(performance.now() - started).toBeLessThan(500);
      expect(client.receivedLength).toBe(0);
      await proxy.waitForLog(new RegExp(`closed_by=proxy reason="${expected}"`));
    }
  });

  test("--retries bounds the tries", async () => {
    const down = [startEchoUpstream(), startEchoUpstream(), startEchoUpstream()];
    for (const upstream of down) upstream.stop();
    await using proxy = await startStage(STAGE, [
      "--port",
      "0",
      ...upstreamArgs(down),
      "--health-interval",
      "0",
      "--retries",
      "1",
    ]);
    const client = await TestClient.connect(proxy.port);
    expect(await client.endsWithin(1000)).toBe(true);
    const [line] = (await proxy.waitForLog(/.*tries=\d+ .*/))!;
    expect(line).toMatch(/tries=2 .*closed_by=upstream reason="cannot connect to upstream .*: connection refused"/);
  });

  test.each([
    [["--balance", "fastest"], /--balance must be one of roundrobin, leastconn, random2/],
    [["--rise", "0"], /--rise must be an integer from 1/],
    [["--upstream", "a:1", "--upstream", "b"], /--upstream must look like HOST:PORT/],
  ])("usage error %p", async (args, message) => {
    const { code, stderr } = await runToExit(STAGE, args);
    expect(code).toBe(2);
    expect(stderr).toMatch(message);
  });
});

hostileContractTests({ file: STAGE, kind: "proxy", args: ["--port", "0"] });
