import { afterAll, describe, expect, test } from "bun:test";
import { echoContractTests } from "../test/support/echo-contract.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";
import { decode, startEchoUpstream, TestClient } from "../test/support/net.ts";
import { proxyApiTests } from "../test/support/proxy-api-contract.ts";
import { toxicArithmeticTests } from "../test/support/toxic-arithmetic.ts";
import { call, startWithApi, toxicApiTests } from "../test/support/toxic-api-contract.ts";
import { roundTrip, toxicContractTests } from "../test/support/toxic-contract.ts";
import { portOf, startToxiproxyServer, toxic, toxiproxyApiTests } from "../test/support/toxiproxy-api-contract.ts";

const STAGE = "tcp_proxy/014-toxiproxy-toxics.ts";

// A proxy in front of an echo upstream is an echo server to its clients: the echo stages' contract holds.
const echoUpstream = startEchoUpstream();
afterAll(() => echoUpstream.stop());
echoContractTests({ file: STAGE, args: ["--port", "0", "--upstream", echoUpstream.address] });

// What 010-013 promise, with toxiproxy's semantics where they differ (docs/toxiproxy.md says where and why).
toxicArithmeticTests(STAGE, () => import("./014-toxiproxy-toxics.ts"), {
  bytesPerKB: 1000,
  semantics: "toxiproxy",
});
toxicContractTests({ file: STAGE, args: ["--api-port", "0"], semantics: "toxiproxy" });
toxicApiTests({ file: STAGE, toxicsPath: "/proxies/default/toxics", semantics: "toxiproxy" });
proxyApiTests({ file: STAGE, semantics: "toxiproxy" });
toxiproxyApiTests({ file: STAGE, toxics: "toxiproxy" });

const startServer = (args: string[] = []) => startToxiproxyServer(STAGE, args);

describe("014 every toxic through toxiproxy-node-client, as toxiproxy defines it", () => {
  test.each([
    ["latency", { latency: 400, jitter: 0 }, "a reply 400 ms late"],
    ["bandwidth", { rate: 100 }, "20 kB at 100 KB/s (1000-byte KB): at least 0.15 s"],
    ["slicer", { average_size: 10, size_variation: 0, delay: 1000 }, "500 bytes in pieces"],
    ["limit_data", { bytes: 100 }, "100 bytes, then the end"],
    ["timeout", { timeout: 300 }, "nothing, then the end after 300 ms"],
    ["reset_peer", { timeout: 200 }, "a reset 200 ms after the reply"],
    ["slow_close", { delay: 400 }, "the end 400 ms after the upstream's"],
    ["noop", {}, "nothing changes"],
  ])("%s %j through the client: %s", async (type, attributes, _what) => {
    await using setup = await startServer();
    const proxy = await setup.client.createProxy({
      name: "echo",
      listen: "127.0.0.1:0",
      upstream: setup.upstreams[0].address,
    });
    await proxy.addToxic(toxic({ type: type as "latency", attributes }));
    const tcp = await TestClient.connect(portOf(proxy.listen));
    const started = performance.now();
    const elapsed = () => performance.now() - started;
    try {
      if (type === "latency" || type === "noop") {
        const ms = await roundTrip(tcp);
        if (type === "latency") expect(ms).toBeGreaterThanOrEqual(399);
        else expect(ms).toBeLessThan(399);
      } else if (type === "bandwidth") {
        tcp.write("x".repeat(20_000));
        expect((await tcp.readAtLeast(20_000, 5000)).length).toBe(20_000);
        expect(elapsed()).toBeGreaterThanOrEqual(150); // 0.2 s at the rate, less the first 10 ms slice and slack
      } else if (type === "slicer") {
        tcp.write("y".repeat(500));
        await tcp.readAtLeast(500);
        expect(tcp.reads).toBeGreaterThanOrEqual(20);
      } else if (type === "limit_data") {
        tcp.write("z".repeat(1000));
        expect((await tcp.readToEnd(3000)).length).toBe(100);
      } else if (type === "timeout") {
        tcp.write("lost");
        expect(await tcp.endsWithin(3000)).toBe(true);
        expect(elapsed()).toBeGreaterThanOrEqual(290);
        expect(tcp.receivedLength).toBe(0);
      } else if (type === "reset_peer") {
        tcp.write("ping");
        expect(await tcp.endsWithin(3000)).toBe(true);
        expect(elapsed()).toBeGreaterThanOrEqual(190);
        expect((tcp.closeError as NodeJS.ErrnoException | undefined)?.code).toBe("ECONNRESET");
      } else if (type === "slow_close") {
        tcp.write("bye");
        await tcp.shutdown(); // the echo upstream answers, then ends: that end is held 400 ms
        expect(decode(await tcp.readToEnd(3000))).toBe("BYE");
        expect(elapsed()).toBeGreaterThanOrEqual(390);
      }
    } finally {
      tcp.close();
    }
  });
});

describe("014 toxics as toxiproxy defines them", () => {
  async function withProxy(args: string[]) {
    const setup = await startWithApi(STAGE, args);
    return Object.assign(setup, { toxics: `${setup.api}/proxies/default/toxics` });
  }

  test("timeout measures a silence: data that keeps coming keeps the connection open", async () => {
    await using setup = await withProxy(["--toxic", "timeout:upstream:timeout=400"]);
    const client = await TestClient.connect(setup.proxy.port);
    for (let i = 0; i < 6; i++) {
      client.write("tick"); // every 150 ms: each dropped chunk starts the 400 ms again
      expect(await client.endsWithin(150)).toBe(false);
    }
    expect(await client.endsWithin(2000)).toBe(true);
    expect(client.receivedLength).toBe(0);
    await setup.proxy.waitForLog(/bytes_up=0 bytes_down=0 closed_by=proxy reason="toxic timeout_upstream"/);
    const metrics = await (await fetch(`${setup.api}/metrics`)).text();
    const labels = 'proxy="default",toxic="timeout_upstream",type="timeout",stream="upstream"';
    expect(metrics).toContain(`toxiproxy_toxic_dropped_bytes_total{${labels}} 24`); // six "tick"s, all dropped
  });

  test("reset_peer waits for the first data: an idle connection stays open", async () => {
    await using setup = await withProxy(["--toxic", "reset_peer:upstream:timeout=100"]);
    const client = await TestClient.connect(setup.proxy.port);
    expect(await client.endsWithin(400)).toBe(false);
    client.write("now");
    expect(await client.endsWithin(2000)).toBe(true);
    expect((client.closeError as NodeJS.ErrnoException | undefined)?.code).toBe("ECONNRESET");
    expect(setup.upstream.heads[0]?.length ?? 0).toBe(0); // the first chunk was dropped
  });

  test("reset_peer with toxicity 0 does nothing: a normal close, no RST (toxiproxy issue #603)", async () => {
    await using setup = await withProxy(["--toxic", "reset_peer:downstream:timeout=0,toxicity=0"]);
    const client = await TestClient.connect(setup.proxy.port);
    client.write("ping");
    await client.shutdown();
    expect(decode(await client.readToEnd(3000))).toBe("PING");
    expect(client.closeError).toBeUndefined();
  });

  test("bandwidth 0 holds the data until the toxic is removed, then it flows", async () => {
    await using setup = await withProxy(["--toxic", "bandwidth:downstream:rate=0"]);
    const client = await TestClient.connect(setup.proxy.port);
    try {
      client.write("held");
      await expect(client.readAtLeast(4, 400)).rejects.toThrow(/timed out/);
      expect((await call(`${setup.toxics}/bandwidth_downstream`, "DELETE")).status).toBe(204);
      expect(decode(await client.readAtLeast(4, 2000))).toBe("HELD");
    } finally {
      client.close();
    }
  });

  test("a latency removed releases the bytes it holds at once", async () => {
    await using setup = await withProxy(["--toxic", "latency:downstream:latency=10000"]);
    const client = await TestClient.connect(setup.proxy.port);
    try {
      client.write("now");
      await expect(client.readAtLeast(3, 300)).rejects.toThrow(/timed out/);
      const started = performance.now();
      await call(`${setup.toxics}/latency_downstream`, "DELETE");
      expect(decode(await client.readAtLeast(3, 3000))).toBe("NOW");
      expect(performance.now() - started).toBeLessThan(2000);
    } finally {
      client.close();
    }
  });

  test("slicer with average_size 0 (toxiproxy's default, which crashes toxiproxy) leaves the data uncut", async () => {
    await using setup = await withProxy(["--toxic", "slicer:downstream"]);
    const client = await TestClient.connect(setup.proxy.port);
    try {
      expect(await roundTrip(client, "whole")).toBeLessThan(2000);
      expect(setup.proxy.proc.exitCode).toBeNull();
    } finally {
      client.close();
    }
  });

  test("a client that half-closes still gets its reply (toxiproxy closes both ways)", async () => {
    await using setup = await withProxy([]);
    const client = await TestClient.connect(setup.proxy.port);
    client.write("hello");
    await client.shutdown();
    expect(decode(await client.readToEnd(3000))).toBe("HELLO");
  });
});

describe("014 seed", () => {
  test("--seed makes the toxicity draws repeat, run after run", async () => {
    const draws = async (): Promise<string> => {
      await using setup = await startServer(["--seed", "42"]);
      const proxy = await setup.client.createProxy({
        name: "s",
        listen: "127.0.0.1:0",
        upstream: setup.upstreams[0].address,
      });
      await proxy.addToxic(toxic({ type: "latency", toxicity: 0.5, attributes: { latency: 600 } }));
      let pattern = "";
      for (let i = 0; i < 8; i++) {
        const tcp = await TestClient.connect(portOf(proxy.listen));
        pattern += (await roundTrip(tcp)) >= 599 ? "x" : ".";
        tcp.close();
      }
      return pattern;
    };
    const first = await draws();
    expect(first).toMatch(/x/);
    expect(first).toMatch(/\./);
    expect(await draws()).toBe(first);
  });
});

hostileContractTests({ file: STAGE, kind: "proxy", args: ["--port", "0"], acceptProxy: true });
