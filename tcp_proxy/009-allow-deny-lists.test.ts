import { describe, expect, test } from "bun:test";
import { concatBytes, decode, encode, startEchoUpstream, TestClient } from "../test/support/net.ts";
import { runToExit, startStage } from "../test/support/process.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";

const STAGE = "tcp_proxy/009-allow-deny-lists.ts";

// The first example of HAProxy's proxy-protocol.txt (section 2.1): the client 192.168.0.1 behind a balancer.
const SPEC_V1_TCP4 = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";

describe("009 allow and deny lists", () => {
  async function admitted(args: string[], header = ""): Promise<boolean> {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, ["--port", "0", "--upstream", upstream.address, ...args]);
    const client = await TestClient.connect(proxy.port, proxy.host);
    try {
      client.write(`${header}ping`);
      await client.readAtLeast(4, 2000);
      return true;
    } catch {
      await proxy.waitForLog(/closed_by=proxy reason="denied /);
      return false;
    } finally {
      client.close();
    }
  }

  test("deny wins, allow admits only its networks", async () => {
    expect(await admitted(["--deny", "127.0.0.0/8"])).toBe(false);
    expect(await admitted(["--allow", "10.0.0.0/8"])).toBe(false);
    expect(await admitted(["--allow", "10.0.0.0/8", "--allow", "127.0.0.1/32"])).toBe(true);
    expect(await admitted(["--allow", "127.0.0.0/8", "--deny", "127.0.0.1"])).toBe(false);
    expect(await admitted(["--deny", "::ffff:127.0.0.0/104"])).toBe(false); // IPv4-mapped form of 127.0.0.0/8
    expect(await admitted(["--deny", "::1/128"])).toBe(true); // an IPv6 network never matches an IPv4 client
  });

  test("IPv6 clients", async () => {
    expect(await admitted(["--host", "::1", "--deny", "::1"])).toBe(false);
    expect(await admitted(["--host", "::1", "--allow", "::/0"])).toBe(true);
  });

  test("behind a load balancer the lists apply to the address in the PROXY header", async () => {
    const allow = ["--accept-proxy", "--allow", "192.168.0.0/16"];
    expect(await admitted(allow, SPEC_V1_TCP4)).toBe(true);
    expect(await admitted(allow, "PROXY TCP4 10.1.2.3 192.168.0.11 56324 443\r\n")).toBe(false);
  });

  test("a denied client is counted as a refusal (denied) in the metrics, before any upstream connection", async () => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, [
      "--port",
      "0",
      "--upstream",
      upstream.address,
      "--deny",
      "127.0.0.0/8",
      "--metrics-port",
      "0",
    ]);
    const [, url] = await proxy.waitForLog(/metrics on (http:\/\/\S+)/);
    const client = await TestClient.connect(proxy.port);
    expect(await client.endsWithin(1000)).toBe(true);
    await proxy.waitForLog(/closed_by=proxy reason="denied 127\.0\.0\.1 by 127\.0\.0\.0\/8"/);
    expect(await (await fetch(url!)).text()).toContain('proxy_connections_refused_total{reason="denied"} 1\n');
    expect(upstream.accepted).toBe(0);
  });

  test.each([
    [["--allow", "10.0.0.0/33"], "--allow", "10.0.0.0/33"],
    [["--allow", "10.0.0"], "--allow", "10.0.0"],
    [["--deny", "fe80::1::2"], "--deny", "fe80::1::2"],
    [["--deny", "::ffff:10.0.0.0/129"], "--deny", "::ffff:10.0.0.0/129"],
  ])("usage error %p: one line, exit 2", async (args, flag, text) => {
    const { code, stderr } = await runToExit(STAGE, args);
    expect(code).toBe(2);
    expect(stderr).toBe(`error: ${flag} must be an IPv4 or IPv6 network like 10.0.0.0/8, got "${text}" (see --help)\n`);
  });
});

hostileContractTests({ file: STAGE, kind: "proxy", args: ["--port", "0"], acceptProxy: true });
