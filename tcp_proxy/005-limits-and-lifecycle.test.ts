import { describe, expect, test } from "bun:test";
import { decode, startEchoUpstream, TestClient } from "../test/support/net.ts";
import { runToExit, startStage } from "../test/support/process.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";

const STAGE = "tcp_proxy/005-limits-and-lifecycle.ts";
const PREVIOUS = "tcp_proxy/004-half-close-and-timeouts.ts";

async function echoOnce(client: TestClient, message: string, alreadyReceived = 0): Promise<string> {
  client.write(message);
  const all = await client.readAtLeast(alreadyReceived + message.length, 3000);
  return decode(all.subarray(alreadyReceived));
}

const LOG_LINE = new RegExp(
  String.raw`#\d+ 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+ duration=(\d+\.\d{3})s connect=(\S+) ` +
    String.raw`bytes_up=(\d+) bytes_down=(\d+) closed_by=(\w+) reason="([^"]*)"`,
);

describe("005 connection log line", () => {
  test("a finished exchange: bytes each way, who closed first and why", async () => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, ["--port", "0", "--upstream", upstream.address]);
    const client = await TestClient.connect(proxy.port);
    expect(await echoOnce(client, "hello, proxy")).toBe("HELLO, PROXY");
    await client.shutdown();
    await client.readToEnd();
    const [, duration, connect, up, down, by, reason] = (await proxy.waitForLog(LOG_LINE))!;
    expect(Number(duration)).toBeGreaterThan(0);
    expect(connect).toMatch(/^\d+\.\dms$/);
    expect([up, down, by, reason]).toEqual(["12", "12", "client", "fin"]);
    expect(proxy.stderr.text.match(new RegExp(LOG_LINE, "g"))).toHaveLength(1); // exactly one line
  });

  test("a reset, a refused upstream and an idle timeout are told apart", async () => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, [
      "--port",
      "0",
      "--upstream",
      upstream.address,
      "--idle-timeout",
      "0.2",
    ]);
    const resetting = await TestClient.connect(proxy.port);
    await echoOnce(resetting, "x");
    resetting.reset();
    let offset = 0; // waitForLog matches from `offset` on, and reports the index within that slice
    const nextLine = async (): Promise<RegExpMatchArray> => {
      const match = await proxy.waitForLog(LOG_LINE, 3000, offset);
      offset += match.index! + match[0].length;
      return match;
    };
    let match = await nextLine();
    expect([match[5], match[6]]).toEqual(["client", "reset"]);

    const idle = await TestClient.connect(proxy.port);
    await echoOnce(idle, "x");
    expect(await idle.endsWithin(2000)).toBe(true);
    match = await nextLine();
    expect([match[5], match[6]]).toEqual(["proxy", "idle-timeout 0.2s"]);

    upstream.stop();
    const refused = await TestClient.connect(proxy.port);
    expect(await refused.endsWithin(2000)).toBe(true);
    match = await nextLine();
    expect(match[2]).toBe("-");
    expect(match[5]).toBe("upstream");
    expect(match[6]).toBe(`cannot connect to upstream ${upstream.address}: connection refused`);
  });
});

describe("005 limits", () => {
  test("--max-clients: the one too many is closed at once, and served once a slot frees up", async () => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, ["--port", "0", "--upstream", upstream.address, "--max-clients", "2"]);
    const first = await TestClient.connect(proxy.port);
    const second = await TestClient.connect(proxy.port);
    expect(await echoOnce(first, "one")).toBe("ONE");
    expect(await echoOnce(second, "two")).toBe("TWO");
    const third = await TestClient.connect(proxy.port);
    expect(await third.endsWithin(1000)).toBe(true);
    expect(third.receivedLength).toBe(0);
    const [line] = (await proxy.waitForLog(/.*closed_by=proxy reason="max-clients 2"/))!;
    expect(line).toContain("bytes_up=0 bytes_down=0");
    expect(upstream.accepted).toBe(2); // no upstream connection was made for it

    first.close();
    await proxy.waitForLog(/closed_by=client reason="fin"/);
    const fourth = await TestClient.connect(proxy.port);
    expect(await echoOnce(fourth, "four")).toBe("FOUR");
    expect(await echoOnce(second, "still here", 3)).toBe("STILL HERE");
    second.close();
    fourth.close();
  });

  test("--max-per-ip: a second client from the same address is refused", async () => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, ["--port", "0", "--upstream", upstream.address, "--max-per-ip", "1"]);
    const first = await TestClient.connect(proxy.port);
    expect(await echoOnce(first, "one")).toBe("ONE");
    const second = await TestClient.connect(proxy.port);
    expect(await second.endsWithin(1000)).toBe(true);
    await proxy.waitForLog(/closed_by=proxy reason="max-per-ip 1"/);
    first.close();
  });
});

describe("005 graceful shutdown", () => {
  test("SIGTERM: open connections finish, new ones are refused, exit 0 after the last (004 cuts them)", async () => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, ["--port", "0", "--upstream", upstream.address]);
    const client = await TestClient.connect(proxy.port);
    expect(await echoOnce(client, "before")).toBe("BEFORE");
    proxy.proc.kill("SIGTERM");
    await proxy.waitForLog(/SIGTERM: no longer accepting, waiting up to 10s for 1 connections to finish/);
    expect(TestClient.connect(proxy.port)).rejects.toThrow(); // the port is closed
    expect(await echoOnce(client, "during", 6)).toBe("DURING");
    await client.shutdown();
    expect(decode(await client.readToEnd())).toBe("BEFOREDURING");
    expect(await proxy.waitExit(3000)).toBe(0);
    expect(proxy.stderr.text).toContain("all connections finished, exiting");

    await using previous = await startStage(PREVIOUS, ["--port", "0", "--upstream", upstream.address]);
    const cut = await TestClient.connect(previous.port);
    expect(await echoOnce(cut, "before")).toBe("BEFORE");
    previous.proc.kill("SIGTERM");
    expect(await previous.waitExit(3000)).toBe(143); // killed by the signal, connection and all
    expect(await cut.endsWithin(1000)).toBe(true);
  });

  test("the drain deadline closes what is still open, and exits 0", async () => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, [
      "--port",
      "0",
      "--upstream",
      upstream.address,
      "--drain-timeout",
      "0.3",
    ]);
    const client = await TestClient.connect(proxy.port);
    expect(await echoOnce(client, "idle")).toBe("IDLE");
    const started = performance.now();
    proxy.proc.kill("SIGINT");
    expect(await proxy.waitExit(3000)).toBe(0);
    expect(performance.now() - started).toBeGreaterThanOrEqual(250);
    expect(await client.endsWithin(1000)).toBe(true);
    expect(proxy.stderr.text).toContain("drain deadline reached: closing 1 connections");
    expect(proxy.stderr.text).toMatch(/closed_by=proxy reason="shutdown"/);
  });

  test("no open connection: exits at once", async () => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, ["--port", "0", "--upstream", upstream.address]);
    proxy.proc.kill("SIGTERM");
    expect(await proxy.waitExit(2000)).toBe(0);
  });

  test.each([
    [["--max-clients", "0"], /--max-clients must be an integer from 1/],
    [["--max-per-ip", "-1"], /--max-per-ip/],
    [["--drain-timeout", "x"], /--drain-timeout must be a number of seconds/],
  ])("usage error %p", async (args, message) => {
    const { code, stderr } = await runToExit(STAGE, args);
    expect(code).toBe(2);
    expect(stderr).toMatch(message);
  });
});

hostileContractTests({ file: STAGE, kind: "proxy", args: ["--port", "0"] });
